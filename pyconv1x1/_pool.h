/* pyconv1x1's worker pool: the kernels' only source of threads (it replaced OpenMP).

   Why our own pool rather than OpenMP:
   - fork: libgomp is not fork-safe; a child forked after a parallel region hangs in its
     first one. This pool registers pthread_atfork handlers and a child starts with no
     workers (it makes new ones on its first threaded run).
   - wait policy: libgomp reads OMP_WAIT_POLICY once, when the first library that links
     it initialises it (torch ships a libgomp.so.1 that ours then shares), so a setting
     made at our import can come too late and idle workers spin. These workers sleep on
     a condition variable as soon as a job has no task left: no CPU is burnt after run()
     returns, whatever was imported first.
   - one job at a time: a second caller (another Python thread running a session while
     a job is in flight) runs its tasks on its own thread instead of oversubscribing.

   A job is `ntasks` independent tasks fn(ctx, task, worker); `worker` is 0 for the
   calling thread and 1 .. nthreads-1 for pool threads, so callers index per-thread
   scratch with it. Tasks are handed out dynamically (a delayed thread takes fewer);
   which thread runs a task never changes its result. Workers run with flush-to-zero
   (they only ever run our kernels); the caller's own state is set and restored around
   its share.

   Generated per kernel variant (each module has its own pool); no Python API is used. */
#ifndef PC1_POOL_H
#define PC1_POOL_H

#include <stddef.h>

typedef void (*pc1_task_fn)(void *ctx, Py_ssize_t task, int worker);

#define PC1_POOL_MAX_THREADS 1024  /* caller included */

#if defined(_WIN32)
/* no pthreads: every job runs on the caller's thread */
#define PC1_POOL_THREADED 0
static int pc1_pool_run(int nthreads, Py_ssize_t ntasks, pc1_task_fn fn, void *ctx,
                        unsigned int (*ftz_on)(void), void (*ftz_restore)(unsigned int)) {
    Py_ssize_t t;
    unsigned int old = ftz_on();
    (void)nthreads;
    for (t = 0; t < ntasks; t++) fn(ctx, t, 0);
    ftz_restore(old);
    return 1;
}
static int pc1_pool_workers(void) { return 0; }
#else
#define PC1_POOL_THREADED 1
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t work;       /* workers: a new job (generation) was posted */
    pthread_cond_t done;       /* caller: the job's last worker finished */
    int nworkers;              /* pool threads alive (ids 1 .. nworkers) */
    int busy;                  /* a job is in flight */
    unsigned long generation;  /* bumped per job */
    pc1_task_fn fn;            /* the job: valid while busy */
    void *ctx;
    Py_ssize_t ntasks;
    Py_ssize_t next;           /* next task to hand out (atomic) */
    int wanted;                /* pool threads taking part: ids 1 .. wanted */
    int active;                /* of those, not finished yet */
    unsigned int (*ftz_on)(void);
} pc1_pool_t;

static pc1_pool_t pc1_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
                              PTHREAD_COND_INITIALIZER, 0, 0, 0, NULL, NULL, 0, 0, 0, 0,
                              NULL};
static pthread_once_t pc1_pool_once = PTHREAD_ONCE_INIT;

static void pc1_pool_tasks(pc1_task_fn fn, void *ctx, Py_ssize_t ntasks, int worker) {
    Py_ssize_t t;
    for (;;) {
        t = __atomic_fetch_add(&pc1_pool.next, 1, __ATOMIC_RELAXED);
        if (t >= ntasks) break;
        fn(ctx, t, worker);
    }
}

typedef struct { int id; unsigned long generation; } pc1_worker_start;

static void *pc1_pool_worker(void *arg) {
    /* the generation current when the thread was made: the job being posted right
       after it (generation + 1) is its first, even if it gets the lock only later */
    int id = ((pc1_worker_start *)arg)->id;
    unsigned long seen = ((pc1_worker_start *)arg)->generation;
    pc1_task_fn fn;
    void *ctx;
    Py_ssize_t ntasks;
    free(arg);
#if defined(__linux__) && defined(__GLIBC__)
    pthread_setname_np(pthread_self(), "pyconv1x1-pool");  /* for top -H, perf, gdb */
#endif
    pthread_mutex_lock(&pc1_pool.mu);
    if (pc1_pool.ftz_on) pc1_pool.ftz_on();
    for (;;) {
        while (pc1_pool.generation == seen)
            pthread_cond_wait(&pc1_pool.work, &pc1_pool.mu);
        seen = pc1_pool.generation;
        if (id > pc1_pool.wanted) continue;  /* a smaller job: not ours */
        fn = pc1_pool.fn;
        ctx = pc1_pool.ctx;
        ntasks = pc1_pool.ntasks;
        pthread_mutex_unlock(&pc1_pool.mu);
        pc1_pool_tasks(fn, ctx, ntasks, id);
        pthread_mutex_lock(&pc1_pool.mu);
        /* the job cannot end (nor a next one start) before every wanted worker has
           counted itself out here, so no worker misses a job it was wanted for */
        if (--pc1_pool.active == 0) pthread_cond_signal(&pc1_pool.done);
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
    pc1_pool.wanted = 0;
    pc1_pool.active = 0;
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
        start->generation = pc1_pool.generation;
        if (pthread_create(&th, &attr, pc1_pool_worker, start) != 0) {
            free(start);
            break;  /* out of threads: run with the ones there are */
        }
        pc1_pool.nworkers++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
}

/* Run tasks 0 .. ntasks-1 on up to nthreads threads (the caller included); returns how
   many took part. */
static int pc1_pool_run(int nthreads, Py_ssize_t ntasks, pc1_task_fn fn, void *ctx,
                        unsigned int (*ftz_on)(void), void (*ftz_restore)(unsigned int)) {
    Py_ssize_t t;
    unsigned int old;
    int wanted;
    if (ntasks <= 0) return 0;
    if ((Py_ssize_t)nthreads > ntasks) nthreads = (int)ntasks;
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
                pc1_pool.wanted = wanted;
                pc1_pool.active = wanted;
                pc1_pool.generation++;
                pthread_cond_broadcast(&pc1_pool.work);
                pthread_mutex_unlock(&pc1_pool.mu);
                old = ftz_on();
                pc1_pool_tasks(fn, ctx, ntasks, 0);
                ftz_restore(old);
                pthread_mutex_lock(&pc1_pool.mu);
                while (pc1_pool.active > 0)
                    pthread_cond_wait(&pc1_pool.done, &pc1_pool.mu);
                pc1_pool.busy = 0;
                pc1_pool.fn = NULL;
                pc1_pool.ctx = NULL;
                pthread_mutex_unlock(&pc1_pool.mu);
                return wanted + 1;
            }
        }
        pthread_mutex_unlock(&pc1_pool.mu);
    }
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
#endif
#endif
