/* pyconv1x1's worker pool: the kernels' only source of threads (it replaced OpenMP).

   Why our own pool rather than OpenMP:
   - fork: libgomp is not fork-safe; a child forked after a parallel region hangs in its
     first one. This pool registers pthread_atfork handlers and a child starts with no
     workers (it makes new ones on its first threaded run).
   - wait policy: libgomp reads OMP_WAIT_POLICY once, when the first library that links
     it initialises it (torch ships a libgomp.so.1 that ours then shares), so a setting
     made at our import can come too late and idle workers spin. These workers sleep on
     a condition variable once a run has no job left: no CPU is burnt after run()
     returns, whatever was imported first.
   - one job at a time: a second caller (another Python thread running a session while
     a job is in flight) runs its tasks on its own thread instead of oversubscribing.

   A job is `ntasks` independent tasks fn(ctx, task, worker); `worker` is 0 for the
   calling thread and 1 .. nthreads-1 for pool threads, so callers index per-thread
   scratch with it. Tasks are handed out dynamically (a delayed thread takes fewer);
   which thread runs a task never changes its result. Workers run with flush-to-zero
   (they only ever run our kernels); the caller's own state is set and restored around
   its share.

   Waking a sleeping thread costs 15 us to 0.4 ms on a VM (the idle vCPU must be woken),
   as much as a whole run of a few-pixel layer, so:
   - a worker joins a job only while it is open: once the caller has taken the last task
     it closes the job and waits only for the workers that joined (they are running a
     task), never for one still waking up; a late worker finds the job closed and waits
     for the next. A late wake-up therefore never makes a job slower than the caller
     alone.
   - a run of several jobs (a chain run layer by layer) posts each but the last with
     `more` set: the workers then spin (bounded: PC1_POOL_SPIN_NS, and only while the
     run is in flight) for the next job instead of going back to sleep, and the whole
     run pays for one wake-up. pc1_pool_wake() starts that wake-up early, before the
     caller prepares its first job. The last job of a run (more == 0) or pc1_pool_rest()
     ends the spinning: after run() returns every worker sleeps.
   - a VM's scheduler may place a woken worker on the busy vCPU of its caller (this
     2-vCPU KVM guest packs woken threads so), where it waits for the caller: the
     second core went unused in most runs of few-pixel layers (joins on the caller's CPU
     in 70-100% of the jobs; onnxruntime's workers, spinning, are never woken). A worker
     that finds itself on its caller's CPU moves off it (pc1_pool_move): its affinity
     becomes the CPUs it started with less the caller's current one. No fixed pinning:
     only one CPU is ever left out, the one the caller last ran on, and a worker moves
     again if the caller comes to it; with one CPU allowed nothing changes.

   Generated per kernel variant (each module has its own pool); no Python API is used. */
#ifndef PC1_POOL_H
#define PC1_POOL_H

#include <stddef.h>

typedef void (*pc1_task_fn)(void *ctx, Py_ssize_t task, int worker);

#define PC1_POOL_MAX_THREADS 1024  /* caller included */
#define PC1_POOL_SPIN_NS 1000000   /* a worker spins at most this long for a run's next
                                      job (the run's own gaps are microseconds) */
#define PC1_POOL_WAIT_SPIN_NS 2000000  /* the caller spins this long at most for joined
                                          workers' last tasks before it sleeps */
/* counters (pc1_pool_stat): jobs posted, tasks in them, worker joins, tasks workers ran,
   joins on the caller's CPU, moves off it */
enum { PC1_STAT_JOBS, PC1_STAT_TASKS, PC1_STAT_JOINS, PC1_STAT_WORKER_TASKS,
       PC1_STAT_JOINS_ON_CALLER, PC1_STAT_MOVES, PC1_POOL_NSTATS };

#if defined(_WIN32)
/* no pthreads: every job runs on the caller's thread */
#define PC1_POOL_THREADED 0
static int pc1_pool_run_more(int nthreads, Py_ssize_t ntasks, pc1_task_fn fn, void *ctx,
                             unsigned int (*ftz_on)(void),
                             void (*ftz_restore)(unsigned int), int more) {
    Py_ssize_t t;
    unsigned int old = ftz_on();
    (void)nthreads;
    (void)more;
    for (t = 0; t < ntasks; t++) fn(ctx, t, 0);
    ftz_restore(old);
    return 1;
}
static inline void pc1_pool_wake(int nthreads) { (void)nthreads; }
static inline void pc1_pool_rest(void) {}
static int pc1_pool_workers(void) { return 0; }
static inline int pc1_pool_spinning(void) { return 0; }
static inline long long pc1_pool_stat(int i) { (void)i; return 0; }
static inline void pc1_pool_set_moves(int on) { (void)on; }
#else
#define PC1_POOL_THREADED 1
#include <pthread.h>
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

/* the job's gate, one atomic word: generation (bumped per job) << 32 | CLOSED | the
   number of workers that joined; a worker joins with a compare-and-swap of the very
   generation it saw open, so it can never join a later job by mistake */
#define PC1_GATE_CLOSED ((uint64_t)1 << 31)
#define PC1_GATE_JOINED ((uint64_t)PC1_GATE_CLOSED - 1)
#define PC1_GATE_GEN(s) ((uint32_t)((s) >> 32))

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t work;       /* sleeping workers: a new generation was posted */
    pthread_cond_t done;       /* caller: a joined worker finished */
    int nworkers;              /* pool threads alive (ids 1 .. nworkers) */
    int busy;                  /* a job is in flight (its caller owns the pool) */
    int sleepers;              /* workers waiting on `work` (under mu) */
    int caller_waiting;        /* the caller waits on `done` (under mu) */
    uint64_t gate;             /* atomic: see PC1_GATE_* */
    int hot;                   /* atomic: a run is in flight, idle workers may spin */
    int spinning;              /* atomic: workers spinning now (tests, diagnostics) */
    int finished;              /* atomic: joined workers done with the job */
    pc1_task_fn fn;            /* the job: valid while it has joined workers */
    void *ctx;
    Py_ssize_t ntasks;
    Py_ssize_t next;           /* next task to hand out (atomic) */
    int wanted;                /* pool threads that may join: ids 1 .. wanted */
    unsigned int (*ftz_on)(void);
    int caller_cpu;            /* atomic: the CPU the caller last posted or woke from */
    int moves;                 /* workers move off the caller's CPU (pc1_pool_move) */
    long long stats[PC1_POOL_NSTATS];  /* atomic counters, see PC1_STAT_* */
} pc1_pool_t;

static pc1_pool_t pc1_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
                              PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, PC1_GATE_CLOSED, 0,
                              0, 0, NULL, NULL, 0, 0, 0, NULL, -1, 1, {0}};
static pthread_once_t pc1_pool_once = PTHREAD_ONCE_INIT;

static inline int pc1_pool_cpu(void) {
#if defined(__linux__) && defined(__GLIBC__)
    return sched_getcpu();
#else
    return -1;
#endif
}

static inline void pc1_pool_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

static inline uint64_t pc1_pool_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* one step of a bounded spin: pause; after the first ~20 us also yield the core (a
   thread of this run that is not running yet, on an oversubscribed machine, gets it)
   and check the clock. Returns 0 once `limit_ns` has passed. */
static inline int pc1_pool_spin_step(unsigned long *i, uint64_t *t0, uint64_t limit_ns) {
    uint64_t now;
    pc1_pool_pause();
    if ((++*i & 255) != 0) return 1;
    now = pc1_pool_now_ns();
    if (*t0 == 0) *t0 = now;
    if (now - *t0 > limit_ns) return 0;
    if (now - *t0 > 20000) sched_yield();
    return 1;
}

static void pc1_pool_tasks(pc1_task_fn fn, void *ctx, Py_ssize_t ntasks, int worker) {
    Py_ssize_t t, n = 0;
    for (;;) {
        t = __atomic_fetch_add(&pc1_pool.next, 1, __ATOMIC_RELAXED);
        if (t >= ntasks) break;
        fn(ctx, t, worker);
        n++;
    }
    if (worker) __atomic_add_fetch(&pc1_pool.stats[PC1_STAT_WORKER_TASKS], n,
                                   __ATOMIC_RELAXED);
}

/* A worker woken onto the CPU its caller runs on (a VM's scheduler may pack woken
   threads onto busy vCPUs) only runs when the caller stops: it moves itself off that CPU
   (its affinity: the CPUs it started with, less the caller's), and moves back the same
   way should the caller come to its CPU. Never a fixed pinning: only the caller's
   current CPU is left out, and only while there are others. */
typedef struct { cpu_set_t base; int ok; } pc1_move_t;

static void pc1_pool_move(pc1_move_t *n) {
#if defined(__linux__) && defined(__GLIBC__)
    int caller = __atomic_load_n(&pc1_pool.caller_cpu, __ATOMIC_RELAXED);
    cpu_set_t set;
    if (!n->ok || caller < 0 || caller >= CPU_SETSIZE
        || !__atomic_load_n(&pc1_pool.moves, __ATOMIC_RELAXED) || pc1_pool_cpu() != caller
        || !CPU_ISSET(caller, &n->base))
        return;
    set = n->base;
    CPU_CLR(caller, &set);
    if (CPU_COUNT(&set) == 0) return;
    if (pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0)
        __atomic_add_fetch(&pc1_pool.stats[PC1_STAT_MOVES], 1, __ATOMIC_RELAXED);
#else
    (void)n;
#endif
}

/* a worker: the gate of the first generation after `seen`; spins for it while a run is
   in flight (hot), bounded, else sleeps */
static uint64_t pc1_pool_await(uint32_t seen, pc1_move_t *move) {
    uint64_t s = __atomic_load_n(&pc1_pool.gate, __ATOMIC_ACQUIRE);
    unsigned long i = 0;
    uint64_t t0 = 0;
    if (PC1_GATE_GEN(s) != seen) return s;
    if (__atomic_load_n(&pc1_pool.hot, __ATOMIC_RELAXED)) {
        __atomic_add_fetch(&pc1_pool.spinning, 1, __ATOMIC_RELAXED);
        while (PC1_GATE_GEN(s = __atomic_load_n(&pc1_pool.gate, __ATOMIC_ACQUIRE)) == seen
               && __atomic_load_n(&pc1_pool.hot, __ATOMIC_RELAXED)
               && pc1_pool_spin_step(&i, &t0, PC1_POOL_SPIN_NS)) {
        }
        __atomic_sub_fetch(&pc1_pool.spinning, 1, __ATOMIC_RELAXED);
        if (PC1_GATE_GEN(s) != seen) return s;
    }
    pthread_mutex_lock(&pc1_pool.mu);
    pc1_pool.sleepers++;
    while (PC1_GATE_GEN(s = __atomic_load_n(&pc1_pool.gate, __ATOMIC_ACQUIRE)) == seen)
        pthread_cond_wait(&pc1_pool.work, &pc1_pool.mu);
    pc1_pool.sleepers--;
    pthread_mutex_unlock(&pc1_pool.mu);
    pc1_pool_move(move);  /* woken: onto the caller's CPU? */
    return s;
}

/* a worker joins the job of gate `s` if it is still open and wants this worker */
static int pc1_pool_join(int id, uint64_t s) {
    uint32_t gen = PC1_GATE_GEN(s);
    while (!(s & PC1_GATE_CLOSED) && PC1_GATE_GEN(s) == gen) {
        /* `wanted` was written before this generation was published; if a later job
           has replaced it since, the compare-and-swap below fails */
        if (id > __atomic_load_n(&pc1_pool.wanted, __ATOMIC_RELAXED)) return 0;
        if (__atomic_compare_exchange_n(&pc1_pool.gate, &s, s + 1, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            return 1;
    }
    return 0;
}

typedef struct { int id; uint32_t generation; } pc1_worker_start;

static void *pc1_pool_worker(void *arg) {
    /* the generation current when the thread was made: the job being posted right
       after it (generation + 1) is its first */
    int id = ((pc1_worker_start *)arg)->id;
    uint32_t seen = ((pc1_worker_start *)arg)->generation;
    uint64_t s;
    pc1_task_fn fn;
    void *ctx;
    Py_ssize_t ntasks;
    pc1_move_t move;
    free(arg);
#if defined(__linux__) && defined(__GLIBC__)
    move.ok = pthread_getaffinity_np(pthread_self(), sizeof move.base, &move.base) == 0;
#else
    move.ok = 0;
#endif
#if defined(__linux__) && defined(__GLIBC__)
    pthread_setname_np(pthread_self(), "pyconv1x1-pool");  /* for top -H, perf, gdb */
#endif
    pthread_mutex_lock(&pc1_pool.mu);
    if (pc1_pool.ftz_on) pc1_pool.ftz_on();
    pthread_mutex_unlock(&pc1_pool.mu);
    for (;;) {
        s = pc1_pool_await(seen, &move);
        seen = PC1_GATE_GEN(s);
        if (!pc1_pool_join(id, s)) continue;  /* closed, or a smaller job: not ours */
        __atomic_add_fetch(&pc1_pool.stats[PC1_STAT_JOINS], 1, __ATOMIC_RELAXED);
        if (pc1_pool_cpu() == __atomic_load_n(&pc1_pool.caller_cpu, __ATOMIC_RELAXED)) {
            __atomic_add_fetch(&pc1_pool.stats[PC1_STAT_JOINS_ON_CALLER], 1,
                               __ATOMIC_RELAXED);
            pc1_pool_move(&move);
        }
        /* joined: the job cannot end before this worker counts itself out below */
        fn = pc1_pool.fn;
        ctx = pc1_pool.ctx;
        ntasks = pc1_pool.ntasks;
        pc1_pool_tasks(fn, ctx, ntasks, id);
        pthread_mutex_lock(&pc1_pool.mu);
        __atomic_add_fetch(&pc1_pool.finished, 1, __ATOMIC_RELEASE);
        if (pc1_pool.caller_waiting) pthread_cond_signal(&pc1_pool.done);
        pthread_mutex_unlock(&pc1_pool.mu);
    }
    return NULL;
}

/* fork: hold the lock across fork() so the child copies a consistent state, then give
   the child a pool with no workers (they do not exist there) and fresh sync objects */
static void pc1_pool_prepare(void) { pthread_mutex_lock(&pc1_pool.mu); }
static void pc1_pool_parent(void) { pthread_mutex_unlock(&pc1_pool.mu); }
static void pc1_pool_child(void) {
    pthread_mutex_init(&pc1_pool.mu, NULL);
    pthread_cond_init(&pc1_pool.work, NULL);
    pthread_cond_init(&pc1_pool.done, NULL);
    pc1_pool.nworkers = 0;
    pc1_pool.busy = 0;
    pc1_pool.sleepers = 0;
    pc1_pool.caller_waiting = 0;
    pc1_pool.gate = (pc1_pool.gate & ~(uint64_t)0xffffffffu) | PC1_GATE_CLOSED;
    pc1_pool.hot = 0;
    pc1_pool.spinning = 0;
    pc1_pool.finished = 0;
    pc1_pool.caller_cpu = -1;
    pc1_pool.wanted = 0;
    pc1_pool.fn = NULL;
    pc1_pool.ctx = NULL;
}
static void pc1_pool_init(void) {
    pthread_atfork(pc1_pool_prepare, pc1_pool_parent, pc1_pool_child);
}

/* Start pool threads until there are `count` (called with the lock held). Workers
   block every signal: Python handles signals on its main thread. */
static void pc1_pool_grow(int count) {
    pthread_attr_t attr;
    pthread_t th;
    sigset_t all, old;
    if (count > PC1_POOL_MAX_THREADS - 1) count = PC1_POOL_MAX_THREADS - 1;
    if (pc1_pool.nworkers >= count) return;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);  /* kernels keep scratch on the heap */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    while (pc1_pool.nworkers < count) {
        pc1_worker_start *start = (pc1_worker_start *)malloc(sizeof *start);
        if (start == NULL) break;
        start->id = pc1_pool.nworkers + 1;
        start->generation = PC1_GATE_GEN(pc1_pool.gate);
        if (pthread_create(&th, &attr, pc1_pool_worker, start) != 0) {
            free(start);
            break;  /* out of threads: run with the ones there are */
        }
        pc1_pool.nworkers++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
}

/* publish a new generation (under the lock, no job in flight): open for a job, or
   closed (a wake-up only) */
static void pc1_pool_post(int open) {
    uint64_t g = (uint64_t)(PC1_GATE_GEN(pc1_pool.gate) + 1u) << 32;
    __atomic_store_n(&pc1_pool.gate, open ? g : g | PC1_GATE_CLOSED, __ATOMIC_RELEASE);
    if (pc1_pool.sleepers > 0) pthread_cond_broadcast(&pc1_pool.work);
}

/* A run is about to post jobs for up to nthreads threads (the caller included): wake
   the workers now, so that they spin (bounded) for its first job instead of being woken
   by it. The run's last job (more == 0) or pc1_pool_rest() sends them back to sleep. */
static inline void pc1_pool_wake(int nthreads) {
    if (nthreads < 2) return;
    pthread_once(&pc1_pool_once, pc1_pool_init);
    pthread_mutex_lock(&pc1_pool.mu);
    if (!pc1_pool.busy && pc1_pool.nworkers > 0) {
        __atomic_store_n(&pc1_pool.caller_cpu, pc1_pool_cpu(), __ATOMIC_RELAXED);
        __atomic_store_n(&pc1_pool.hot, 1, __ATOMIC_RELAXED);
        if (pc1_pool.sleepers > 0) pc1_pool_post(0);
    }
    pthread_mutex_unlock(&pc1_pool.mu);
}

/* No job follows: spinning workers go back to sleep (a run that ends without the job a
   pc1_pool_wake announced, e.g. on an error, or that ran serially after all). */
static inline void pc1_pool_rest(void) {
    if (!__atomic_load_n(&pc1_pool.hot, __ATOMIC_RELAXED)) return;
    pthread_mutex_lock(&pc1_pool.mu);
    if (!pc1_pool.busy) __atomic_store_n(&pc1_pool.hot, 0, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&pc1_pool.mu);
}

/* Run tasks 0 .. ntasks-1 on up to nthreads threads (the caller included); returns how
   many threads could take part. `more`: this run posts another job right after this
   one (idle workers spin for it); 0 for a run's last job (they sleep). */
static int pc1_pool_run_more(int nthreads, Py_ssize_t ntasks, pc1_task_fn fn, void *ctx,
                             unsigned int (*ftz_on)(void),
                             void (*ftz_restore)(unsigned int), int more) {
    Py_ssize_t t;
    unsigned int old;
    int wanted, joined;
    unsigned long i = 0;
    uint64_t t0 = 0;
    if ((Py_ssize_t)nthreads > ntasks) nthreads = ntasks > 0 ? (int)ntasks : 1;
    if (nthreads > PC1_POOL_MAX_THREADS) nthreads = PC1_POOL_MAX_THREADS;
    if (nthreads > 1) {
        pthread_once(&pc1_pool_once, pc1_pool_init);
        pthread_mutex_lock(&pc1_pool.mu);
        if (!pc1_pool.busy) {
            pc1_pool.ftz_on = ftz_on;
            pc1_pool_grow(nthreads - 1);
            wanted = pc1_pool.nworkers < nthreads - 1 ? pc1_pool.nworkers : nthreads - 1;
            if (wanted > 0) {
                pc1_pool.busy = 1;
                pc1_pool.fn = fn;
                pc1_pool.ctx = ctx;
                pc1_pool.ntasks = ntasks;
                pc1_pool.next = 0;
                __atomic_store_n(&pc1_pool.wanted, wanted, __ATOMIC_RELAXED);
                __atomic_store_n(&pc1_pool.finished, 0, __ATOMIC_RELAXED);
                __atomic_store_n(&pc1_pool.hot, more ? 1 : 0, __ATOMIC_RELAXED);
                __atomic_add_fetch(&pc1_pool.stats[PC1_STAT_JOBS], 1, __ATOMIC_RELAXED);
                __atomic_add_fetch(&pc1_pool.stats[PC1_STAT_TASKS], ntasks, __ATOMIC_RELAXED);
                __atomic_store_n(&pc1_pool.caller_cpu, pc1_pool_cpu(), __ATOMIC_RELAXED);
                pc1_pool_post(1);
                pthread_mutex_unlock(&pc1_pool.mu);
                old = ftz_on();
                pc1_pool_tasks(fn, ctx, ntasks, 0);
                ftz_restore(old);
                /* every task is taken: close the job; wait for the workers that joined
                   (each is finishing a task), not for those still waking up */
                joined = (int)(__atomic_fetch_or(&pc1_pool.gate, PC1_GATE_CLOSED,
                                                 __ATOMIC_ACQ_REL) & PC1_GATE_JOINED);
                while (__atomic_load_n(&pc1_pool.finished, __ATOMIC_ACQUIRE) < joined
                       && pc1_pool_spin_step(&i, &t0, PC1_POOL_WAIT_SPIN_NS)) {
                }
                pthread_mutex_lock(&pc1_pool.mu);
                pc1_pool.caller_waiting = 1;
                while (__atomic_load_n(&pc1_pool.finished, __ATOMIC_ACQUIRE) < joined)
                    pthread_cond_wait(&pc1_pool.done, &pc1_pool.mu);
                pc1_pool.caller_waiting = 0;
                pc1_pool.busy = 0;
                pc1_pool.fn = NULL;
                pc1_pool.ctx = NULL;
                pthread_mutex_unlock(&pc1_pool.mu);
                return wanted + 1;
            }
        }
        pthread_mutex_unlock(&pc1_pool.mu);
    }
    if (!more) pc1_pool_rest();
    old = ftz_on();
    for (t = 0; t < ntasks; t++) fn(ctx, t, 0);
    ftz_restore(old);
    return 1;
}

/* pool threads alive in this process (0 in a fresh fork child) */
static int pc1_pool_workers(void) {
    int n;
    pthread_mutex_lock(&pc1_pool.mu);
    n = pc1_pool.nworkers;
    pthread_mutex_unlock(&pc1_pool.mu);
    return n;
}

/* counter i (PC1_STAT_*) since the process started (or forked) */
static inline long long pc1_pool_stat(int i) {
    return i >= 0 && i < PC1_POOL_NSTATS
               ? __atomic_load_n(&pc1_pool.stats[i], __ATOMIC_RELAXED) : 0;
}

/* whether woken workers move off their caller's CPU (on by default; benchmarks) */
static inline void pc1_pool_set_moves(int on) {
    __atomic_store_n(&pc1_pool.moves, on ? 1 : 0, __ATOMIC_RELAXED);
}

/* pool threads spinning for a job right now (0 whenever no run is in flight) */
static inline int pc1_pool_spinning(void) {
    return __atomic_load_n(&pc1_pool.spinning, __ATOMIC_RELAXED);
}
#endif

/* one job, the last of its run: idle workers sleep when it ends */
static int pc1_pool_run(int nthreads, Py_ssize_t ntasks, pc1_task_fn fn, void *ctx,
                        unsigned int (*ftz_on)(void), void (*ftz_restore)(unsigned int)) {
    if (ntasks <= 0) {
        pc1_pool_rest();
        return 0;
    }
    return pc1_pool_run_more(nthreads, ntasks, fn, ctx, ftz_on, ftz_restore, 0);
}
#endif
