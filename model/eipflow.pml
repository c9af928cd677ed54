/* eipflow's fenced protocol for one EIP, for SPIN.

   What the row may do on each event comes from machine.pml, generated from the machine's
   exported spec; this file is the protocol around it: the version-checked row, work items with
   leases on one shared clock, an inline caller and workers, backend calls that succeed, fail or
   time out (and whose request may still reach the host afterwards), cleanup revokes, VM facts
   and detach/delete intents at any point, the reconciler, and hosts that apply the generation
   rule. docs/model.md says what is checked, at what size, and what is abstracted away.

   Configurations are preprocessor definitions (spin -DWORKERS=2 ...). PROBE_* definitions turn a
   scenario into an assertion, so a test can show a passing configuration really reaches it.
   The bug variants:
     BUG_NO_GENERATION        hosts ignore generations (apply and revoke always act)
     BUG_UNFENCED_CLEANUP     cleanup revokes carry no generation: they remove whatever is there
     BUG_BINDING_AFTER_APPLY  the attach calls the backend first and writes the binding after
                              (ZStack before ZSTAC-83309) */

/* ---- configuration ------------------------------------------------------------------------ */
#ifndef WORKERS
#define WORKERS 2        /* background workers, besides the inline caller */
#endif
#ifndef INTENTS
#define INTENTS 2        /* VM stop/start/migrate, detach, delete, re-attach: how many in one run */
#endif
#ifndef FAULTS
#define FAULTS 1         /* failed or timed-out backend calls in one run */
#endif
#ifndef TMAX
#define TMAX 2           /* clock ticks in one run; each can expire a lease */
#endif
#ifndef REATTACH
#define REATTACH 0       /* 1: an intent may attach the EIP again, to another NIC */
#endif
#ifndef RECONCILE
#define RECONCILE 0      /* 1: one reconciler pass, and host 1 starts with a leaked rule (gen 0) */
#endif
#ifndef DELETES
#define DELETES 0        /* 1: delete is one of the intents */
#endif

#define LEASE 1
#define PARKED 255                   /* a parked item's owner and expiry: never claimable again */
#define NO_EVENT 255
#define CALLER 1                     /* actor ids: 1 the inline caller, 2.. the workers */
#define NACT (WORKERS + 1)
#define NITEMS 3                     /* slot 0: the row's work item; 1..: cleanup revokes */

#define D_ATTACHED 1
#define D_DETACHED 2
#define D_DELETED 3

#define APPLY 1
#define REVOKE 2

#define R_OK 1        /* accepted (or already so) */
#define R_REFUSED 2   /* the host refused: it has seen a newer generation (StaleGeneration) */
#define R_FAILED 3    /* the backend failed before doing anything (retryable) */
#define R_TIMEOUT 4   /* outcome unknown: the request may have run, or may still run */

/* ---- the EIP row: every write below is one compare-and-swap on `ver` -------------------------- */
byte st = 0;                     /* INITIAL_STATE, checked in init */
byte ver = 1;
byte desired = D_DETACHED;
byte rhost = 0;          /* the VM's host as the row last recorded it; 0: stopped or unbound */
byte applied = 0;        /* applied_host: the host that may hold the rule */
bool confirmed = 0;      /* attach_confirmed */
byte nic = 0;            /* the binding (NIC, guest IP): 0 none, else which one */
byte wid = 0;            /* the row's work item id; 0: none */
byte nhist = 1;          /* history rows written (one per version) */

#define G_wants_attached (desired == D_ATTACHED)
#define G_wants_deleted (desired == D_DELETED)
#define G_vm_running (rhost != 0)
#define G_on_applied_host (rhost != 0 && rhost == applied)
#define G_attach_confirmed (confirmed)

#include "machine.pml"           /* after the guards: resolve() reads them */

/* ---- the VM's facts as eipflow was last told them --------------------------------------------- */
byte vm = 1;             /* the host it runs on; 0: stopped */

/* ---- durable work items; the lease is judged on the one shared clock -------------------------- */
typedef Item { byte id; byte act; byte gen; byte h; byte c; byte owner; byte exp; bool live; bool cleanup }
Item it[NITEMS];
byte nextid = 100;                 /* cleanup item ids; the row's items are numbered by version */
byte now = 0;

#define CLAIMABLE(i) (it[i].live && (it[i].owner == 0 || now >= it[i].exp))
#define HOLDS(i) (it[i].id == mid && it[i].owner == me)

/* ---- hosts 1 and 2: the rule for this EIP, and the highest generation each has seen ----------- */
bool has[3]; byte rgen[3]; byte rc[3];
byte seen[3]; bool tomb[3];          /* tomb: the generation `seen` was a revoke */
byte hi[3]; bool hirev[3];           /* ghost: the last generation that changed the host, and how */

/* ---- backend requests: sent by an actor, executed by the host whenever it gets to them -------- */
typedef Req { byte act; byte g; byte h; byte c; bool cln; bool live; bool done; byte res }
Req req[NACT + 1];                   /* the call an actor is waiting on */
Req late[NACT + 1];                  /* a timed-out request still on its way to the host */
byte faults = 0;

inline clear_req(R) { R.act = 0; R.g = 0; R.h = 0; R.c = 0; R.cln = 0; R.live = 0; R.done = 0; R.res = 0 }

inline free_item(i) {
   it[i].id = 0; it[i].act = 0; it[i].gen = 0; it[i].h = 0; it[i].c = 0; it[i].owner = 0; it[i].exp = 0;
   it[i].live = 0; it[i].cleanup = 0
}

inline new_item(i, id_, a_, g_, h_, c_, cln_) {
   assert(!it[i].live);              /* "raise NITEMS" if a cleanup finds no free slot */
   it[i].id = id_;
   it[i].act = a_; it[i].gen = g_; it[i].h = h_; it[i].c = c_; it[i].owner = 0; it[i].exp = 0;
   it[i].live = 1; it[i].cleanup = cln_
}

/* P2, P3: every change of a host carries a generation no older than the last change there, an
   apply never lands at a generation already revoked there, and at most one host holds the rule. */
inline changed(h, kind, g) {
   assert(g >= hi[h]);
   assert(!(kind == APPLY && g == hi[h] && hirev[h]));
   hi[h] = g; hirev[h] = (kind == REVOKE)
}

/* RECONCILE: the VM's host starts with a rule leaked by an earlier life of this EIP (another NIC) */
#define LEAK_LEFT (RECONCILE && has[1] && rgen[1] == 0 && rc[1] == 2)
#define ONE_HOST (!(has[1] && has[2]) || LEAK_LEFT)

/* What a host does with the request in the Hosts process's qa qg qh qc ql, answering in hres. */
inline host_exec() {
   if
   :: qa == APPLY ->
#ifdef BUG_NO_GENERATION
      if
      :: !(has[qh] && rc[qh] == qc && rgen[qh] == qg) -> changed(qh, APPLY, qg);
         has[qh] = 1; rgen[qh] = qg; rc[qh] = qc
      :: else -> skip
      fi;
      hres = R_OK
#else
      if
      :: qg < seen[qh] -> hres = R_REFUSED
      :: qg == seen[qh] && tomb[qh] -> hres = R_REFUSED
      :: qg == seen[qh] && !tomb[qh] && has[qh] && rc[qh] != qc -> hres = R_REFUSED
      :: qg == seen[qh] && !tomb[qh] && has[qh] && rc[qh] == qc -> hres = R_OK
      :: (qg == seen[qh] && !tomb[qh] && !has[qh]) || qg > seen[qh] ->
         changed(qh, APPLY, qg);
         has[qh] = 1; rgen[qh] = qg; rc[qh] = qc; seen[qh] = qg; tomb[qh] = 0; hres = R_OK
      fi
#endif
   :: qa == REVOKE ->
      if
#ifdef BUG_NO_GENERATION
      :: 1 ->
#else
#ifdef BUG_UNFENCED_CLEANUP
      :: ql ->
#else
      :: 0 -> skip
#endif
#endif
         if
         :: has[qh] -> changed(qh, REVOKE, qg); has[qh] = 0; rgen[qh] = 0; rc[qh] = 0
         :: else -> skip
         fi;
         hres = R_OK
      :: else ->
         if
         :: has[qh] && rgen[qh] > qg -> hres = R_REFUSED             /* never removes a newer rule */
         :: !has[qh] && qg < seen[qh] -> hres = R_REFUSED            /* older than the tombstone */
         :: else ->
            if
            :: has[qh] -> changed(qh, REVOKE, qg); has[qh] = 0; rgen[qh] = 0; rc[qh] = 0
            :: else -> skip
            fi;
            seen[qh] = qg; tomb[qh] = 1;                              /* qg >= seen here */
            hres = R_OK
         fi
      fi
   fi;
   assert(ONE_HOST);
#ifdef PROBE_REFUSED
   assert(hres != R_REFUSED)         /* probe: a stale call reaches a host and is refused */
#endif
#ifdef PROBE_CLEANUP_REFUSED
   assert(!(ql && hres == R_REFUSED))   /* probe: a cleanup revoke meets a newer generation */
#endif
}

inline say_req(R) {
   if :: R.act == APPLY -> printf("apply") :: else -> printf("revoke") fi;
   printf(" gen %d on H%d (binding %d)", R.g, R.h, R.c)
}

inline say_res(res) {
   if
   :: res == R_OK -> printf("ok")
   :: res == R_REFUSED -> printf("REFUSED (stale generation)")
   :: res == R_FAILED -> printf("failed")
   :: else -> printf("timed out")
   fi
}

inline say_row() {
   printf(" => "); say_state(st); printf(" v%d", ver);
   if :: nic != 0 -> printf(" binding %d", nic) :: else -> skip fi;
   if :: applied != 0 -> printf(" applied H%d", applied) :: else -> skip fi;
   if :: wid != 0 -> printf(" work #%d", wid) :: else -> skip fi
}

/* One version-checked write of the row: state `tgt` with the runner's entry effects, a history
   row, the completing item `done_item` (NITEMS: none) finished and new work enqueued, in one
   transaction. Work item generation = the version this transition writes. */
inline commit(ev, tgt, work, done_item) {
   assert(tgt != S_NONE);
   if
   :: tgt != st && done_item < NITEMS && work != W_CONTINUE_APPLY -> free_item(done_item)
   :: else -> skip
   fi;
   ver++; nhist++;
   assert(ver == nhist);                                  /* P4: history versions are consecutive */
   if
   :: tgt != st && tgt == S_detached ->
      nic = 0; rhost = 0; applied = 0; desired = D_DETACHED; confirmed = 0; wid = 0
   :: tgt != st && tgt == S_applying -> applied = rhost
   :: tgt != st && tgt == S_attached -> confirmed = 1; wid = 0
   :: tgt != st && tgt == S_released -> applied = 0; confirmed = 1; wid = 0
   :: tgt != st && tgt == S_deleted -> nic = 0; rhost = 0; applied = 0; confirmed = 0; wid = 0
   :: else -> skip
   fi;
   if
   :: work == W_ENQUEUE_APPLY -> new_item(0, ver, APPLY, ver, applied, nic, 0); wid = it[0].id
   :: work == W_ENQUEUE_REVOKE -> assert(applied != 0); new_item(0, ver, REVOKE, ver, applied, nic, 0); wid = it[0].id
   :: work == W_CONTINUE_APPLY -> it[0].h = applied; it[0].gen = ver
   :: else -> skip
   fi;
   printf(" "); say_event(ev); printf(":"); st = tgt; say_row(); printf("\n")
}

/* Resolve `ev` on the row as merged by the caller (who keeps what to restore) and write it;
   ok = 0 when the state does not allow it. */
inline fire(ev) {
   resolve(ev, tgt, work);
   if
   :: tgt != S_NONE -> commit(ev, tgt, work, NITEMS); ok = 1
   :: else -> ok = 0
   fi
}

/* ---- the runner (shared by the inline caller and the workers) --------------------------------
   A runner's own steps that only touch the database under its lease are merged into one atomic
   step (claim, read the row, proceed, send): a pause between them is equivalent to a pause before
   the claim. What stays separate is what a pause can break: the request on its way to the host,
   the answer on its way back, and every later database write. */

/* Send (a g h c) to the host as the runner `me` (the lease was taken or renewed just now). */
inline send() {
   req[me].act = a; req[me].g = g; req[me].h = h; req[me].c = c; req[me].cln = cl;
   req[me].live = 1; req[me].done = 0; sent = 1;
   printf("MSG: %d sends ", me); say_req(req[me]); printf("\n")
}

/* Fenced completion: our item is still the row's, we still own its lease; merge the VM's latest
   placement, resolve, write. A failure the state keeps (a retry) puts the item back, unleased.
   Sets ok (we moved the row) and o2 (the state written). */
inline complete(ev, err) {
   ok = 0; o2 = 0;
   if
   :: wid == mid && HOLDS(0) ->
      o1 = rhost;
      if :: nic != 0 -> rhost = vm :: else -> skip fi;
      if
      :: ev == E_revoke_ok && st == S_rolling_back && nic != it[0].c ->
         rhost = o1; free_item(0); printf("MSG: %d rollback skipped: not our binding\n", me)
      :: else ->
         resolve(ev, tgt, work);
         if
         :: tgt == st && err && !perm -> it[0].owner = 0; it[0].exp = 0          /* rescheduled */
         :: tgt == st && err && perm -> it[0].owner = PARKED; it[0].exp = PARKED  /* parked */
         :: else -> skip
         fi;
         printf("MSG: %d", me); commit(ev, tgt, work, 0); ok = 1; o2 = st
      fi
   :: else -> printf("MSG: %d fenced out of #%d\n", me, mid)
   fi;
   o1 = 0
}

#define REALIZES(hh, cc) ((st == S_applying || st == S_attached) && applied == (hh) && nic == (cc))

/* Right after the claim: decide, and send the backend call if there is one. */
inline begin() {
   cl = it[mi].cleanup; a = it[mi].act; g = it[mi].gen; h = it[mi].h; c = it[mi].c;
   if
   :: cl && REALIZES(h, c) ->
      printf("MSG: %d cancels cleanup #%d: the rule is wanted again\n", me, mid); free_item(mi)
   :: cl && !REALIZES(h, c) -> send()
   :: !cl && wid != mid -> printf("MSG: %d drops #%d: superseded\n", me, mid); free_item(mi)
   :: !cl && wid == mid ->
      ok = 1;
      if
      :: st == S_binding -> complete(E_proceed, 0); ok = (ok && o2 == S_applying);
         a = it[0].act; g = it[0].gen; h = it[0].h; c = it[0].c
      :: else -> skip
      fi;
      if :: ok -> send() :: else -> skip fi
   fi
}

/* The answer (or the timeout), then the fenced write it leads to. */
inline finish() {
   if
   :: req[me].done -> res = req[me].res
   :: faults < FAULTS && !req[me].done -> faults++; res = R_FAILED        /* nothing was done */
   :: faults < FAULTS -> faults++; res = R_TIMEOUT;                       /* outcome unknown */
      if
      :: req[me].done -> skip                                           /* it ran; the answer was lost */
      :: !req[me].done && !late[me].live ->                             /* it may still run */
         late[me].act = req[me].act; late[me].g = req[me].g; late[me].h = req[me].h;
         late[me].c = req[me].c; late[me].cln = req[me].cln; late[me].live = 1
      :: !req[me].done -> skip                                          /* it never will */
      fi
   fi;
   clear_req(req[me]);
   printf("MSG: %d <- ", me); say_res(res); printf("\n");
   if
   :: cl ->
      if
      :: HOLDS(mi) && (res == R_OK || res == R_REFUSED) -> free_item(mi)
      :: HOLDS(mi) && (res == R_FAILED || res == R_TIMEOUT) -> it[mi].owner = 0; it[mi].exp = 0
      :: else -> skip
      fi
   :: !cl ->
      if
      :: res == R_OK && a == APPLY -> cev = E_apply_ok; err = 0
      :: res == R_REFUSED && a == APPLY -> cev = E_apply_failed; err = 1; perm = 1   /* not retried */
      :: (res == R_FAILED || res == R_TIMEOUT) && a == APPLY -> cev = E_apply_failed; err = 1
      :: (res == R_OK || res == R_REFUSED) && a == REVOKE -> cev = E_revoke_ok; err = 0
         /* refused: the host holds only something newer than this revoke; nothing of ours is left */
      :: (res == R_FAILED || res == R_TIMEOUT) && a == REVOKE -> cev = E_revoke_failed; err = 1
      fi;
      complete(cev, err);
      orph = (a == APPLY && !ok && (res == R_OK || res == R_TIMEOUT))
   fi
}

/* We (maybe) applied, then lost the EIP: revoke ours with our generation unless it is wanted. */
inline orphaned_apply() {
   if
   :: REALIZES(h, c) -> skip
   :: else ->
      o1 = 1;
      do
      :: o1 < NITEMS && it[o1].live -> o1++
      :: o1 < NITEMS && !it[o1].live -> break
      :: o1 == NITEMS -> assert(0)   /* raise NITEMS */
      od;
      new_item(o1, nextid, REVOKE, g, h, c, 1); nextid++;
      printf("MSG: %d enqueues cleanup #%d: revoke gen %d on H%d\n", me, it[o1].id, g, h)
   fi;
   o1 = 0
}

#define RESET mi = 0; mid = 0; a = 0; g = 0; h = 0; c = 0; res = 0; tgt = 0; work = 0; ok = 0; \
   o1 = 0; o2 = 0; o3 = 0; cev = 0; err = 0; cl = 0; sent = 0; orph = 0; perm = 0

/* Claim item i (due, or its lease expired) and start it. */
inline claim(i) {
#ifdef PROBE_LEASE_TAKEN
   assert(it[i].owner == 0);         /* probe: an expired lease is taken over from its holder */
#endif
   it[i].owner = me; it[i].exp = now + LEASE; mi = i; mid = it[i].id;
   printf("MSG: %d claims #%d (", me, mid);
   if :: it[i].cleanup -> printf("cleanup ") :: else -> skip fi;
   if :: it[i].act == APPLY -> printf("apply") :: else -> printf("revoke") fi;
   printf(" gen %d) at t=%d\n", it[i].gen, now)
}

/* An intent on the row: merge its change (iev, ival; o3 = the host an attach read), resolve,
   write; an intent the state does not allow changes nothing. */
inline intent() {
   o1 = rhost; o2 = desired; ok = 1;
   if
   :: iev == E_vm_stopped || iev == E_vm_started || iev == E_vm_migrated ->
      if :: nic != 0 -> rhost = ival :: else -> ok = 0 fi      /* only EIPs bound to the VM */
   :: iev == E_detach || iev == E_delete -> desired = ival
   :: iev == E_attach ->
      if
      :: st == S_detached -> nic = ival; rhost = o3; desired = D_ATTACHED; confirmed = 0
      :: else -> ok = 0
      fi
   :: else -> skip                                             /* the reconciler's repairs */
   fi;
   if
   :: ok -> printf("MSG: %d", me); fire(iev);
      if
      :: !ok -> rhost = o1; desired = o2;
         if :: iev == E_attach -> nic = 0 :: else -> skip fi;
         printf(" "); say_event(iev); printf(": illegal in "); say_state(st); printf("\n")
      :: else -> skip
      fi
   :: else -> skip
   fi;
   o1 = 0; o2 = 0; o3 = 0; tgt = 0; work = 0; ok = 0; iev = 0; ival = 0
}

#define RUNNER_LOCALS byte mi, mid, a, g, h, c, res, tgt, work, o1, o2, o3, cev, iev, ival; \
   bool ok, err, cl, sent, orph, perm
#define CALLER_CAN (wid != 0 && it[0].id == wid && CLAIMABLE(0))

/* ---- the inline caller (me == CALLER: `attach` fires the intent, then drives the work itself)
   and the background workers (claim any due or expired item) ------------------------------------ */
proctype Runner(byte me) {
   RUNNER_LOCALS;
   if
   :: me == CALLER ->
      atomic { o3 = vm; printf("MSG: %d reads the VM: on H%d\n", me, o3) }   /* may be stale */
#ifdef BUG_BINDING_AFTER_APPLY
      /* ZStack before the fix: call the backend, then write the binding from the copy read before. */
      if
      :: o3 != 0 ->
         atomic { req[me].act = APPLY; req[me].g = ver; req[me].h = o3; req[me].c = 1; req[me].live = 1;
            printf("MSG: %d sends ", me); say_req(req[me]); printf(" before writing the binding\n") }
         atomic {
            req[me].done -> res = req[me].res; clear_req(req[me]);
            if
            :: res == R_OK && st == S_detached ->
               nic = 1; rhost = o3; applied = o3; desired = D_ATTACHED; confirmed = 1;
               ver++; nhist++; st = S_attached;
               printf("MSG: %d writes the binding after the apply", me); say_row(); printf("\n")
            :: else -> skip
            fi;
            res = 0; o3 = 0
         }
      :: else -> skip
      fi;
      goto done
#else
      atomic { iev = E_attach; ival = 1; intent() }
#endif
   :: else -> skip
   fi;
end:
   do
   :: atomic {
         if
         :: CLAIMABLE(0) && (me != CALLER || it[0].id == wid) -> claim(0)
         :: me != CALLER && CLAIMABLE(1) -> claim(1)
         :: me != CALLER && CLAIMABLE(2) -> claim(2)
         fi;
         begin();
         if :: !sent -> RESET :: else -> skip fi
      }
      if
      :: sent ->
         atomic { finish(); if :: !orph -> RESET :: else -> skip fi }
         if :: orph -> atomic { orphaned_apply(); RESET } :: else -> skip fi
      :: else -> skip
      fi
   :: me == CALLER && !CALLER_CAN -> break
   od;
done:
   skip
}

/* ---- hosts: execute requests in any order, whenever ------------------------------------------- */
#define LOAD(R) qa = R.act; qg = R.g; qh = R.h; qc = R.c; ql = R.cln
#define UNLOAD qa = 0; qg = 0; qh = 0; qc = 0; ql = 0; hres = 0
#define DELIVER(k) \
   :: atomic { req[k].live && !req[k].done -> printf("MSG: H%d runs %d's ", req[k].h, k); say_req(req[k]); \
         LOAD(req[k]); host_exec(); req[k].res = hres; req[k].done = 1; printf(": "); say_res(hres); \
         printf("\n"); UNLOAD } \
   :: atomic { late[k].live -> printf("MSG: H%d runs %d's late ", late[k].h, k); say_req(late[k]); \
         LOAD(late[k]); host_exec(); printf(": "); say_res(hres); printf("\n"); clear_req(late[k]); UNLOAD }

proctype Hosts() {
   byte hres, qa, qg, qh, qc; bool ql;
end:
   do
   DELIVER(1)
#if NACT >= 2
   DELIVER(2)
#endif
#if NACT >= 3
   DELIVER(3)
#endif
#if NACT >= 4
   DELIVER(4)
#endif
   od
}

/* ---- the shared clock ------------------------------------------------------------------------- */
proctype Clock() {
end:
   do
   :: atomic { now < TMAX -> now++; printf("MSG: clock t=%d\n", now) }
   od
}

/* ---- intents from the platform and the user, at any point ------------------------------------- */
#define ENV 9

/* A VM fact is recorded first, then fired on the EIPs bound to the VM (two transactions); an
   attach reads the VM's facts, then fires (two transactions: the read may be stale). */
proctype Env() {
   byte me = ENV;
   byte n = 0, iev, ival, tgt, work, o1, o2, o3;
   bool ok;
   do
   :: atomic { n < INTENTS ->
      n++;
      if
      :: vm != 0 -> iev = E_vm_stopped; ival = 0
      :: vm == 0 -> iev = E_vm_started; ival = 1
      :: vm == 0 -> iev = E_vm_started; ival = 2
      :: vm != 0 -> iev = E_vm_migrated; ival = 3 - vm
      :: iev = E_detach; ival = D_DETACHED
#if DELETES
      :: iev = E_delete; ival = D_DELETED
#endif
#if REATTACH
      :: st == S_detached -> iev = E_attach; ival = 2
#endif
      fi;
      if
      :: iev == E_vm_stopped || iev == E_vm_started || iev == E_vm_migrated ->
         vm = ival; printf("MSG: %d VM fact: ", me); say_event(iev); printf(" H%d\n", ival)
      :: iev == E_attach -> o3 = vm
      :: else -> skip
      fi
      }
      atomic { intent() }
   :: break
   od
}

/* ---- the reconciler: rows, then rules, then rows again; judge only a row that did not move ---- */
#if RECONCILE
proctype Reconciler() {
   byte me = 8;
   byte v1, rh, rg, rcc, tgt, work, o1, o2, o3, iev, ival;
   bool rhas, ok;
   atomic { v1 = ver; if :: rh = 1 :: rh = 2 fi }
   atomic { rhas = has[rh]; rg = rgen[rh]; rcc = rc[rh];
            printf("MSG: %d reads H%d: ", me, rh); if :: rhas -> printf("rule gen %d binding %d\n", rg, rcc)
            :: else -> printf("no rule\n") fi }
   atomic {
      if
      :: ver != v1 || IN_FLIGHT(st) -> v1 = 0; printf("MSG: %d: the row moved or is in flight: next pass\n", me)
      :: else ->
         if
         :: rhas && st == S_attached && applied == rh && nic == rcc -> v1 = 0         /* held */
         :: rhas && !(st == S_attached && applied == rh && nic == rcc) ->            /* stray */
            if :: st != S_deleted -> iev = E_stray_detected :: else -> skip fi
         :: !rhas && st == S_attached && applied == rh ->                            /* missing */
            v1 = 0; iev = E_drift_detected
         :: else -> v1 = 0
         fi;
         if :: iev != 0 -> intent() :: else -> skip fi
      fi
   }
   atomic {
      if
      :: v1 != 0 ->
         o1 = 1;
         do
         :: o1 < NITEMS && it[o1].live -> o1++
         :: o1 < NITEMS && !it[o1].live -> break
         :: o1 == NITEMS -> assert(0)
         od;
         new_item(o1, nextid, REVOKE, rg, rh, rcc, 1); nextid++;
         printf("MSG: %d enqueues cleanup #%d: revoke gen %d on H%d\n", me, it[o1].id, rg, rh)
      :: else -> skip
      fi
   }
}
#endif


/* ---- P1: at quiescence (nothing can move) the dataplane is exactly the attached row ----------- */
proctype Quiescence() {
   timeout ->
   printf("MSG: quiescent:"); say_row(); printf(", VM on H%d, rules H1=%d H2=%d\n", vm, has[1], has[2]);
   assert(!it[0].live && !it[1].live && !it[2].live);                   /* no work left behind */
   assert(!IN_FLIGHT(st));                                              /* nothing stuck in flight */
   assert(st != S_attached || (has[applied] && rc[applied] == nic && rgen[applied] > 0));
   assert(st == S_attached || ((!has[1] && !has[2]) || LEAK_LEFT));    /* no stray rule */
   assert(st != S_attached || !has[3 - applied] || (applied == 2 && LEAK_LEFT));
   assert(st != S_attached || (desired == D_ATTACHED && vm == applied));/* the latest VM fact wins */
   assert(!(nic != 0 && desired == D_ATTACHED && vm != 0) || st == S_attached);
   assert(!(nic != 0 && desired == D_ATTACHED && vm == 0) || st == S_released)
}

init {
   atomic {
      assert(st == INITIAL_STATE);
#if RECONCILE
      has[1] = 1; rgen[1] = 0; rc[1] = 2;
      run Reconciler();
#endif
      run Quiescence();
      run Hosts();
      run Clock();
      run Runner(CALLER);
      run Env();
#if WORKERS >= 1
      run Runner(2);
#endif
#if WORKERS >= 2
      run Runner(3);
#endif
#if WORKERS >= 3
      run Runner(4);
#endif
   }
}
