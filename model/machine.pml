/* EipMachine's transition relation, generated from the machine's exported spec by
   eipflow.diagrams.renderers.promela. Do not edit: regenerate
   (python -m eipflow.diagrams.renderers.promela diagrams/spec.json model/machine.pml). */

/* states, in declaration order */
#define S_detached 0
#define S_binding 1
#define S_applying 2
#define S_attached 3
#define S_rolling_back 4
#define S_releasing 5
#define S_released 6
#define S_detaching 7
#define S_deleted 8
#define S_NONE 255

/* events: intents (callers, the reconciler) and completions (the runner) */
#define E_attach 0 /* intent */
#define E_detach 1 /* intent */
#define E_delete 2 /* intent */
#define E_vm_stopped 3 /* intent */
#define E_vm_started 4 /* intent */
#define E_vm_migrated 5 /* intent */
#define E_drift_detected 6 /* intent */
#define E_stray_detected 7 /* intent */
#define E_proceed 8 /* completion */
#define E_apply_ok 9 /* completion */
#define E_apply_failed 10 /* completion */
#define E_revoke_ok 11 /* completion */
#define E_revoke_failed 12 /* completion */

/* backend work a transition enqueues */
#define W_NONE 0
#define W_ENQUEUE_APPLY 1
#define W_ENQUEUE_REVOKE 2
#define W_CONTINUE_APPLY 3

#define INITIAL_STATE S_detached
#define IN_FLIGHT(s) ((s) == S_binding || (s) == S_applying || (s) == S_rolling_back || (s) == S_releasing || (s) == S_detaching)
#define STABLE(s) ((s) == S_detached || (s) == S_attached || (s) == S_released)
#define FINAL(s) ((s) == S_deleted)
#define OWNS_APPLY(s) ((s) == S_binding || (s) == S_applying)
#define OWNS_REVOKE(s) ((s) == S_rolling_back || (s) == S_releasing || (s) == S_detaching)

/* guards the protocol defines over its row: G_wants_attached, G_vm_running, G_wants_deleted, G_on_applied_host, G_attach_confirmed */

/* The target of event `ev` in state `st`: the first declared transition whose guards
   hold, or S_NONE when the event is illegal there. `work` is what it enqueues. */
inline resolve(ev, tgt, work) {
d_step {
   tgt = S_NONE; work = W_NONE;
   if
   :: (st == S_detached && ev == E_attach) ->
      tgt = S_binding; work = W_ENQUEUE_APPLY
   :: (st == S_detached && ev == E_delete) ->
      tgt = S_deleted; work = W_NONE
   :: (st == S_detached && ev == E_stray_detected) ->
      tgt = S_detached; work = W_NONE
   :: (st == S_binding && ev == E_detach) ->
      tgt = S_binding; work = W_NONE
   :: (st == S_binding && ev == E_delete) ->
      tgt = S_binding; work = W_NONE
   :: (st == S_binding && ev == E_vm_stopped) ->
      tgt = S_binding; work = W_NONE
   :: (st == S_binding && ev == E_vm_started) ->
      tgt = S_binding; work = W_NONE
   :: (st == S_binding && ev == E_vm_migrated) ->
      tgt = S_binding; work = W_NONE
   :: (st == S_binding && ev == E_proceed) ->
      if
      :: (G_wants_attached && G_vm_running) -> tgt = S_applying; work = W_CONTINUE_APPLY
      :: else ->
         if
         :: (G_wants_attached) -> tgt = S_released; work = W_NONE
         :: else ->
            if
            :: (G_wants_deleted) -> tgt = S_deleted; work = W_NONE
            :: else ->
               tgt = S_detached; work = W_NONE
            fi
         fi
      fi
   :: (st == S_applying && ev == E_detach) ->
      tgt = S_applying; work = W_NONE
   :: (st == S_applying && ev == E_delete) ->
      tgt = S_applying; work = W_NONE
   :: (st == S_applying && ev == E_vm_stopped) ->
      tgt = S_applying; work = W_NONE
   :: (st == S_applying && ev == E_vm_started) ->
      tgt = S_applying; work = W_NONE
   :: (st == S_applying && ev == E_vm_migrated) ->
      tgt = S_applying; work = W_NONE
   :: (st == S_applying && ev == E_apply_ok) ->
      if
      :: (G_wants_attached && G_on_applied_host) -> tgt = S_attached; work = W_NONE
      :: else ->
         if
         :: (G_wants_attached) -> tgt = S_releasing; work = W_ENQUEUE_REVOKE
         :: else ->
            tgt = S_detaching; work = W_ENQUEUE_REVOKE
         fi
      fi
   :: (st == S_applying && ev == E_apply_failed) ->
      if
      :: (!G_attach_confirmed) -> tgt = S_rolling_back; work = W_ENQUEUE_REVOKE
      :: else ->
         if
         :: (!G_wants_attached) -> tgt = S_detaching; work = W_ENQUEUE_REVOKE
         :: else ->
            if
            :: (G_on_applied_host) -> tgt = S_applying; work = W_NONE
            :: else ->
               tgt = S_releasing; work = W_ENQUEUE_REVOKE
            fi
         fi
      fi
   :: (st == S_attached && ev == E_detach) ->
      tgt = S_detaching; work = W_ENQUEUE_REVOKE
   :: (st == S_attached && ev == E_delete) ->
      tgt = S_detaching; work = W_ENQUEUE_REVOKE
   :: (st == S_attached && ev == E_vm_stopped) ->
      tgt = S_releasing; work = W_ENQUEUE_REVOKE
   :: (st == S_attached && ev == E_vm_started) ->
      if
      :: (G_on_applied_host) -> tgt = S_attached; work = W_NONE
      :: else ->
         tgt = S_releasing; work = W_ENQUEUE_REVOKE
      fi
   :: (st == S_attached && ev == E_vm_migrated) ->
      if
      :: (G_on_applied_host) -> tgt = S_attached; work = W_NONE
      :: else ->
         tgt = S_releasing; work = W_ENQUEUE_REVOKE
      fi
   :: (st == S_attached && ev == E_drift_detected) ->
      if
      :: (G_vm_running) -> tgt = S_applying; work = W_ENQUEUE_APPLY
      :: else ->
         tgt = S_releasing; work = W_ENQUEUE_REVOKE
      fi
   :: (st == S_attached && ev == E_stray_detected) ->
      tgt = S_attached; work = W_NONE
   :: (st == S_rolling_back && ev == E_detach) ->
      tgt = S_rolling_back; work = W_NONE
   :: (st == S_rolling_back && ev == E_delete) ->
      tgt = S_rolling_back; work = W_NONE
   :: (st == S_rolling_back && ev == E_vm_stopped) ->
      tgt = S_rolling_back; work = W_NONE
   :: (st == S_rolling_back && ev == E_vm_started) ->
      tgt = S_rolling_back; work = W_NONE
   :: (st == S_rolling_back && ev == E_vm_migrated) ->
      tgt = S_rolling_back; work = W_NONE
   :: (st == S_rolling_back && ev == E_revoke_ok) ->
      if
      :: (G_wants_deleted) -> tgt = S_deleted; work = W_NONE
      :: else ->
         tgt = S_detached; work = W_NONE
      fi
   :: (st == S_rolling_back && ev == E_revoke_failed) ->
      tgt = S_rolling_back; work = W_NONE
   :: (st == S_releasing && ev == E_detach) ->
      tgt = S_releasing; work = W_NONE
   :: (st == S_releasing && ev == E_delete) ->
      tgt = S_releasing; work = W_NONE
   :: (st == S_releasing && ev == E_vm_stopped) ->
      tgt = S_releasing; work = W_NONE
   :: (st == S_releasing && ev == E_vm_started) ->
      tgt = S_releasing; work = W_NONE
   :: (st == S_releasing && ev == E_vm_migrated) ->
      tgt = S_releasing; work = W_NONE
   :: (st == S_releasing && ev == E_revoke_ok) ->
      if
      :: (G_wants_attached && G_vm_running) -> tgt = S_applying; work = W_ENQUEUE_APPLY
      :: else ->
         if
         :: (G_wants_attached) -> tgt = S_released; work = W_NONE
         :: else ->
            if
            :: (G_wants_deleted) -> tgt = S_deleted; work = W_NONE
            :: else ->
               tgt = S_detached; work = W_NONE
            fi
         fi
      fi
   :: (st == S_releasing && ev == E_revoke_failed) ->
      tgt = S_releasing; work = W_NONE
   :: (st == S_released && ev == E_detach) ->
      tgt = S_detached; work = W_NONE
   :: (st == S_released && ev == E_delete) ->
      tgt = S_deleted; work = W_NONE
   :: (st == S_released && ev == E_vm_stopped) ->
      tgt = S_released; work = W_NONE
   :: (st == S_released && ev == E_vm_started) ->
      tgt = S_applying; work = W_ENQUEUE_APPLY
   :: (st == S_released && ev == E_vm_migrated) ->
      tgt = S_released; work = W_NONE
   :: (st == S_released && ev == E_stray_detected) ->
      tgt = S_released; work = W_NONE
   :: (st == S_detaching && ev == E_detach) ->
      tgt = S_detaching; work = W_NONE
   :: (st == S_detaching && ev == E_delete) ->
      tgt = S_detaching; work = W_NONE
   :: (st == S_detaching && ev == E_vm_stopped) ->
      tgt = S_detaching; work = W_NONE
   :: (st == S_detaching && ev == E_vm_started) ->
      tgt = S_detaching; work = W_NONE
   :: (st == S_detaching && ev == E_vm_migrated) ->
      tgt = S_detaching; work = W_NONE
   :: (st == S_detaching && ev == E_revoke_ok) ->
      if
      :: (G_wants_deleted) -> tgt = S_deleted; work = W_NONE
      :: else ->
         tgt = S_detached; work = W_NONE
      fi
   :: (st == S_detaching && ev == E_revoke_failed) ->
      tgt = S_detaching; work = W_NONE
   :: else -> skip /* no transition declared: illegal */
   fi
}
}

/* names for the readable trace */
inline say_state(s) {
   if
   :: (s) == S_detached -> printf("detached")
   :: (s) == S_binding -> printf("binding")
   :: (s) == S_applying -> printf("applying")
   :: (s) == S_attached -> printf("attached")
   :: (s) == S_rolling_back -> printf("rolling_back")
   :: (s) == S_releasing -> printf("releasing")
   :: (s) == S_released -> printf("released")
   :: (s) == S_detaching -> printf("detaching")
   :: (s) == S_deleted -> printf("deleted")
   :: else -> printf("?")
   fi
}

inline say_event(e) {
   if
   :: (e) == E_attach -> printf("attach")
   :: (e) == E_detach -> printf("detach")
   :: (e) == E_delete -> printf("delete")
   :: (e) == E_vm_stopped -> printf("vm_stopped")
   :: (e) == E_vm_started -> printf("vm_started")
   :: (e) == E_vm_migrated -> printf("vm_migrated")
   :: (e) == E_drift_detected -> printf("drift_detected")
   :: (e) == E_stray_detected -> printf("stray_detected")
   :: (e) == E_proceed -> printf("proceed")
   :: (e) == E_apply_ok -> printf("apply_ok")
   :: (e) == E_apply_failed -> printf("apply_failed")
   :: (e) == E_revoke_ok -> printf("revoke_ok")
   :: (e) == E_revoke_failed -> printf("revoke_failed")
   :: else -> printf("?")
   fi
}
