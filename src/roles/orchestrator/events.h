/*
 * The orchestrator's timeline and the web dashboard (internal to the role):
 *   events.c     a ring of recent decisions and events (placed, started,
 *                ready, evicted, retried, pool down/up, ...) and the
 *                server-sent event stream GET /v2/cluster/events
 *   dashboard.c  the page at / (files compiled in from dashboard/), and
 *                POST /v2/cluster/workers/{pool}/{id}/drain
 *
 * Events come from three places: the scheduler's start and stop decisions
 * (orch_events_ops wraps them as they leave the scheduler), the pools'
 * worker events (one call in pool_api.c), and a comparison, at every tick,
 * of the cluster view with the one of the tick before (pools up/down,
 * workers' states, retries, pending reasons), so the scheduler itself needs
 * no calls of its own.
 * Everything runs on the loop thread.
 */
#ifndef LLORCH_ORCH_EVENTS_H
#define LLORCH_ORCH_EVENTS_H

#include "orchestrator-impl.h"

#define ORCH_EVENTS_RING 256            /* events kept for streams that connect later */
#define ORCH_EVENTS_PUSH_MIN_MS 250     /* at most four state snapshots a second */
#define ORCH_EVENTS_PUSH_MAX_MS 5000    /* and one at least this often (heartbeat ages) */
#define ORCH_EVENTS_MAX_STREAMS 64      /* open /v2/cluster/events streams */
#define ORCH_EVENTS_MAX_QUEUED (4u << 20) /* bytes waiting for a stream's reader before it is ended */

typedef struct orch_events orch_events;

/* Creates the event state of o and adds GET /v2/cluster/events (operator
 * key). Returns 0 or a negative code with em. */
int orch_events_init(orch *o, llorch_errmsg *em);
/* Ends every open stream (shutdown begins: they would hold it up). */
void orch_events_stop(orch *o);
void orch_events_free(orch *o);

/*
 * Records one event: kind is a short word ("placed", "pool_down", ...);
 * pool, worker and model may be NULL; the message says what happened in
 * words. Sent at once to every open stream.
 */
void orch_event(orch *o, const char *kind, const char *pool, const char *worker, const char *model,
                const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* A worker event from a pool (pool_api.c): recorded as it arrives, since
 * the scheduler may forget an ended worker before the next tick. */
void orch_events_worker(orch *o, const char *pool, const sched_worker_report *w);

/* Called at every tick: compares the cluster view with the last tick's,
 * records what changed, and sends a state snapshot to the streams when it
 * changed (at most every ORCH_EVENTS_PUSH_MIN_MS). */
void orch_events_tick(orch *o, int64_t now_ms);

/* The scheduler's callbacks with the start and stop decisions recorded on
 * the way to pool_api.c. */
void orch_events_ops(orch *o, sched_ops *ops);

/* ---- dashboard.c ---- */

/* Adds GET / and GET /dashboard/{file} (public: the page holds no data) and the
 * drain route (operator key). Returns 0 or a negative code with em. */
int orch_dashboard_init(orch *o, llorch_errmsg *em);

/* ---- orchestrator.c ---- */

/* The whole state of GET /v2/cluster as JSON into b. */
void orch_cluster_json(orch *o, llorch_jbuf *b);

#endif /* LLORCH_ORCH_EVENTS_H */
