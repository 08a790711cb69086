/* Loopback call benchmark through the C ABI: a C caller and a C handler
 * (a thread taking call events in bursts and replying with the payload),
 * plaintext and sealed, 100 B payloads, concurrency 1 and 16. The caller
 * runs twice: c threads each blocked in tribe_node_call, then one thread
 * keeping c calls in flight with tribe_node_call_async (rows "async"). Same topology as `cargo bench --bench rpc`: two
 * nodes in one process, the host a member of tribe "bench" by hand, the
 * caller not a member, so every call crosses the loopback call stream.
 * Prints markdown rows: | path | concurrency | calls/s | p50 µs | p99 µs |
 * CPU µs per call | context switches per call | errors |
 * TRIBE_BENCH_WORKERS (runtime threads per node, default 1, so that the two
 * nodes together have as many as the single runtime of benches/rpc.rs on
 * this 2-core machine, as in the Go benchmark) and TRIBE_BENCH_HANDLERS
 * (threads answering calls, default 1: the one thread waiting for events
 * then also reads the calls from their sockets) vary the setup. With one
 * handler thread, a further row runs the sixteen blocked callers against
 * two ("two handler threads"), as many as the Rust host's tokio workers.
 *
 * Apart, the two nodes run in two processes, as two daemons of a tribe
 * would: `--host` starts the host alone, prints "ADDRESS PID" and serves
 * until its standard input ends; `--caller ADDRESS PID` runs the rows
 * against it, and its CPU and switch columns then cover both processes.
 * TRIBE_BENCH_KEY (a key of `tribe keygen`) seals both; the label says
 * "sealed" when it is set.
 *
 *   calls [--quick]
 *   calls --host
 *   calls --caller ADDRESS PID [--quick]
 */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <unistd.h>
#include <time.h>

#include "tribe.h"

#define PAYLOAD 100
#define MAX_SAMPLES 2000000

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU time (user + system, µs) and context switches of the whole process:
 * what a call costs, which stays meaningful on a busy machine where the
 * calls/s column does not. */
typedef struct {
    double cpu_us;
    long switches;
} usage;

/* The host process of a run apart (0: the host is in this process). */
static pid_t host_pid = 0;

/* CPU (in clock ticks, so coarser than getrusage) and context switches of
 * every thread of another process, from /proc. */
static usage proc_usage(pid_t pid) {
    usage u = {0, 0};
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f) {
        char buf[1024];
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = 0;
        fclose(f);
        /* Fields after the command name, which ends at the last ')'. */
        char *p = strrchr(buf, ')');
        unsigned long utime = 0, stime = 0;
        if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime,
                        &stime) == 2)
            u.cpu_us = (double)(utime + stime) * 1e6 / (double)sysconf(_SC_CLK_TCK);
    }
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d) return u;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char status[320], line[256];
        snprintf(status, sizeof status, "/proc/%d/task/%s/status", (int)pid, e->d_name);
        FILE *t = fopen(status, "r");
        if (!t) continue;
        while (fgets(line, sizeof line, t)) {
            long v = 0;
            if (sscanf(line, "voluntary_ctxt_switches: %ld", &v) == 1 ||
                sscanf(line, "nonvoluntary_ctxt_switches: %ld", &v) == 1)
                u.switches += v;
        }
        fclose(t);
    }
    closedir(d);
    return u;
}

static usage usage_now(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    usage u = {(double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 +
                   (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec),
               ru.ru_nvcsw + ru.ru_nivcsw};
    if (host_pid > 0) {
        usage h = proc_usage(host_pid);
        u.cpu_us += h.cpu_us;
        u.switches += h.switches;
    }
    return u;
}

static void print_row(const char *label, int c, size_t calls, size_t all_calls, double window,
                      uint32_t *sorted, long errors, usage u0) {
    usage u1 = usage_now();
    double p50 = calls ? sorted[calls / 2] / 10.0 : 0, p99 = calls ? sorted[calls * 99 / 100] / 10.0 : 0;
    double per = all_calls ? (double)all_calls : 1;
    printf("| %s | %d | %.0f | %.0f | %.0f | %.1f | %.2f | %ld |\n", label, c, calls / window, p50,
           p99, (u1.cpu_us - u0.cpu_us) / per, (double)(u1.switches - u0.switches) / per, errors);
    fflush(stdout);
}

static void need(uint32_t rc, tribe_error *err, const char *what) {
    if (rc != TRIBE_OK) {
        fprintf(stderr, "calls: %s: %s\n", what, tribe_error_message(err));
        exit(1);
    }
}

static unsigned worker_threads = 1; /* TRIBE_BENCH_WORKERS */
static int handler_threads = 1;      /* TRIBE_BENCH_HANDLERS */

/* The poll group that nodes started while it is set join. */
static tribe_group *start_group = NULL;

static tribe_node *start(const char *name, const char *key, const char *seed) {
    tribe_config *cfg = NULL;
    tribe_node *node = NULL;
    tribe_error *err = NULL;
    need(tribe_config_new(name, &cfg, &err), err, "config");
    need(tribe_config_set_profile(cfg, "local", &err), err, "profile");
    need(tribe_config_set_collect_facts(cfg, false, &err), err, "facts");
    need(tribe_config_set_worker_threads(cfg, worker_threads, &err), err, "threads");
    if (key) need(tribe_config_add_key(cfg, key, &err), err, "key");
    if (seed) need(tribe_config_add_seed(cfg, seed, &err), err, "seed");
    if (start_group) need(tribe_config_set_group(cfg, start_group, &err), err, "group");
    need(tribe_node_start(cfg, &node, &err), err, "start");
    tribe_config_free(cfg);
    return node;
}

/* The C handler: echo the payload back, taking calls in bursts. */
static void *serve(void *arg) {
    tribe_node *host = arg;
    tribe_event *evs[64];
    size_t n = 0;
    while (tribe_node_next_events(host, -1, evs, 64, &n, NULL) == TRIBE_OK) {
        for (size_t i = 0; i < n; i++) {
            tribe_responder *r = NULL;
            if (tribe_event_kind(evs[i]) == TRIBE_EVENT_CALL &&
                tribe_event_take_responder(evs[i], &r, NULL) == TRIBE_OK) {
                size_t len = 0;
                const uint8_t *p = tribe_responder_payload(r, &len);
                tribe_responder_reply(r, p, len, NULL);
                tribe_responder_free(r);
            }
            tribe_event_free(evs[i]);
        }
    }
    return NULL;
}

/* Drains the caller's events during the blocking rows so its queue stays
 * small; stopped before the asynchronous rows, which take their own. */
static atomic_bool draining = true;

static void *drain(void *arg) {
    tribe_node *n = arg;
    while (atomic_load(&draining)) {
        tribe_event *ev = NULL;
        if (tribe_node_next_event(n, 20, &ev, NULL) != TRIBE_OK) break;
        tribe_event_free(ev);
    }
    return NULL;
}

typedef struct {
    tribe_node *caller;
    double warm_end, end;
    uint32_t *samples; /* latencies in ns/100 */
    size_t n, all;
    long errors;
} worker;

static void *call_loop(void *arg) {
    worker *w = arg;
    uint8_t payload[PAYLOAD];
    memset(payload, 'x', sizeof payload);
    for (;;) {
        double t0 = now_s();
        if (t0 >= w->end) break;
        uint8_t *reply = NULL;
        size_t len = 0;
        uint32_t rc = tribe_node_call(w->caller, "bench", "echo", NULL, TRIBE_KIND_PROCESSOR,
                                      payload, sizeof payload, 10000, &reply, &len, NULL);
        double t1 = now_s();
        tribe_bytes_free(reply, len);
        w->all++;
        if (t0 < w->warm_end) continue;
        if (rc != TRIBE_OK || len != PAYLOAD) w->errors++;
        else if (w->n < MAX_SAMPLES) w->samples[w->n++] = (uint32_t)((t1 - t0) * 1e7);
    }
    return NULL;
}

static int cmp(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static void row(const char *label, tribe_node *caller, int c, double warm, double window) {
    worker ws[16];
    pthread_t ts[16];
    usage u0 = usage_now();
    double t = now_s();
    for (int i = 0; i < c; i++) {
        ws[i] = (worker){caller, t + warm, t + warm + window, malloc(MAX_SAMPLES * 4), 0, 0, 0};
        pthread_create(&ts[i], NULL, call_loop, &ws[i]);
    }
    size_t total = 0, all_calls = 0;
    long errors = 0;
    for (int i = 0; i < c; i++) {
        pthread_join(ts[i], NULL);
        total += ws[i].n;
        all_calls += ws[i].all;
        errors += ws[i].errors;
    }
    uint32_t *all = malloc((total ? total : 1) * 4);
    size_t k = 0;
    for (int i = 0; i < c; i++) {
        memcpy(all + k, ws[i].samples, ws[i].n * 4);
        k += ws[i].n;
        free(ws[i].samples);
    }
    qsort(all, total, 4, cmp);
    print_row(label, c, total, all_calls, window, all, errors, u0);
    free(all);
}

/* Asynchronous calls kept in flight: c at a time, each started again when
 * it completes until the window ends. */
typedef struct {
    tribe_node *caller;
    int c, in_flight;
    uint8_t payload[PAYLOAD];
    uint64_t ids[16];
    double started[16], warm_end, end;
    uint32_t *samples;
    size_t total, all_calls;
    long errors;
    usage u0;
} flight;

static void flight_start(flight *f, tribe_node *caller, int c, double warm, double window) {
    memset(f, 0, sizeof *f);
    f->caller = caller;
    f->c = c;
    memset(f->payload, 'x', sizeof f->payload);
    f->samples = malloc(MAX_SAMPLES * 4);
    f->u0 = usage_now();
    double t = now_s();
    f->warm_end = t + warm;
    f->end = t + warm + window;
    for (int i = 0; i < c; i++) {
        tribe_error *err = NULL;
        f->started[i] = now_s();
        need(tribe_node_call_async(caller, "bench", "echo", NULL, TRIBE_KIND_PROCESSOR, f->payload,
                                   sizeof f->payload, 10000, &f->ids[i], &err),
             err, "call_async");
        f->in_flight++;
    }
}

/* Takes the completions among `n` events (freeing them all) and starts the
 * next calls while the window lasts. */
static void flight_complete(flight *f, tribe_event **evs, size_t n) {
    double t1 = now_s();
    for (size_t k = 0; k < n; k++) {
        uint64_t id = 0;
        if (tribe_event_kind(evs[k]) != TRIBE_EVENT_CALL_DONE ||
            tribe_event_call_id(evs[k], &id, NULL) != TRIBE_OK) {
            tribe_event_free(evs[k]);
            continue;
        }
        int i = 0;
        while (i < f->c && f->ids[i] != id) i++;
        uint8_t *reply = NULL;
        size_t len = 0;
        uint32_t rc = tribe_event_take_reply(evs[k], &reply, &len, NULL);
        tribe_bytes_free(reply, len);
        tribe_event_free(evs[k]);
        if (i == f->c) continue;
        f->in_flight--;
        f->all_calls++;
        if (f->started[i] >= f->warm_end) {
            if (rc != TRIBE_OK || len != PAYLOAD) f->errors++;
            else if (f->total < MAX_SAMPLES)
                f->samples[f->total++] = (uint32_t)((t1 - f->started[i]) * 1e7);
        }
        if (t1 < f->end) {
            f->started[i] = now_s();
            if (tribe_node_call_async(f->caller, "bench", "echo", NULL, TRIBE_KIND_PROCESSOR,
                                      f->payload, sizeof f->payload, 10000, &f->ids[i],
                                      NULL) == TRIBE_OK)
                f->in_flight++;
            else
                f->errors++;
        }
    }
}

static void flight_print(flight *f, const char *label, const char *shape, double window) {
    qsort(f->samples, f->total, 4, cmp);
    char full[96];
    snprintf(full, sizeof full, "%s, %s", label, shape);
    print_row(full, f->c, f->total, f->all_calls, window, f->samples, f->errors, f->u0);
    free(f->samples);
}

/* One thread keeps c calls in flight with tribe_node_call_async and takes
 * their completions in bursts with tribe_node_next_events: the pattern of
 * an event-loop daemon, with no thread blocked per call. */
static void row_async(const char *label, tribe_node *caller, int c, double warm, double window) {
    flight f;
    flight_start(&f, caller, c, warm, window);
    tribe_event *evs[64];
    while (f.in_flight > 0) {
        size_t n = 0;
        if (tribe_node_next_events(caller, 1000, evs, 64, &n, NULL) != TRIBE_OK) break;
        flight_complete(&f, evs, n);
    }
    flight_print(&f, label, "async", window);
}

/* Replies to the calls waiting at `host` (up to 64), without waiting for
 * more than `timeout_ms`; how many it answered. */
static size_t answer(tribe_node *host, int timeout_ms) {
    tribe_event *evs[64];
    size_t n = 0;
    if (tribe_node_next_events(host, timeout_ms, evs, 64, &n, NULL) != TRIBE_OK) return 0;
    for (size_t i = 0; i < n; i++) {
        tribe_responder *r = NULL;
        if (tribe_event_kind(evs[i]) == TRIBE_EVENT_CALL &&
            tribe_event_take_responder(evs[i], &r, NULL) == TRIBE_OK) {
            size_t len = 0;
            const uint8_t *p = tribe_responder_payload(r, &len);
            tribe_responder_reply(r, p, len, NULL);
            tribe_responder_free(r);
        }
        tribe_event_free(evs[i]);
    }
    return n;
}

/* One thread is both sides, as one tokio worker runs a Rust caller's and a
 * Rust handler's tasks: it starts c calls with tribe_node_call_async, then
 * answers them at the host and takes their completions at the caller, in
 * turn. Each wait (but one of 0 ms) drives that node's call streams on this
 * thread. */
static void row_one_thread(const char *label, tribe_node *host, tribe_node *caller, int c,
                           double warm, double window) {
    flight f;
    flight_start(&f, caller, c, warm, window);
    tribe_event *evs[64];
    while (f.in_flight > 0) {
        size_t answered = answer(host, 100);
        size_t n = 0;
        if (tribe_node_next_events(caller, answered ? 100 : 0, evs, 64, &n, NULL) != TRIBE_OK) break;
        flight_complete(&f, evs, n);
    }
    flight_print(&f, label, "one thread", window);
}

/* The one-thread row with both nodes in one poll group: each wait in the
 * group drives both nodes' call streams, so a call is read by the host and
 * its answer by the caller in the same wait, as one tokio worker runs both
 * sides' tasks. */
static void row_group(const char *label, tribe_group *group, tribe_node *host,
                      tribe_node *caller, int c, double warm, double window) {
    flight f;
    flight_start(&f, caller, c, warm, window);
    tribe_event *evs[64];
    while (f.in_flight > 0) {
        if (tribe_group_wait(group, 100, NULL) != TRIBE_OK) break;
        answer(host, 0);
        size_t n = 0;
        if (tribe_node_next_events(caller, 0, evs, 64, &n, NULL) != TRIBE_OK) break;
        flight_complete(&f, evs, n);
    }
    flight_print(&f, label, "one thread in a group", window);
}

static bool endpoint_seen(tribe_node *caller) {
    char *json = NULL;
    if (tribe_node_tribe_json(caller, "bench", &json, NULL, NULL) != TRIBE_OK) return false;
    bool in = strstr(json, "\"bench-host") != NULL;
    tribe_string_free(json);
    if (!in) return false;
    if (tribe_node_members_json(caller, &json, NULL, NULL) != TRIBE_OK) return false;
    in = strstr(json, "\"name\":\"echo\"") != NULL;
    tribe_string_free(json);
    return in;
}

/* The host of tribe "bench", serving echo on `threads` handler threads. */
static tribe_node *start_host(const char *name, const char *key, pthread_t *handlers,
                              int threads) {
    tribe_node *host = start(name, key, NULL);
    tribe_error *err = NULL;
    need(tribe_node_create_tribe(host, "bench", &err), err, "create");
    need(tribe_node_join(host, "bench", NULL, &err), err, "join");
    need(tribe_node_serve(host, "echo", "1", TRIBE_KIND_PROCESSOR, &err), err, "serve");
    for (int i = 0; i < threads; i++) pthread_create(&handlers[i], NULL, serve, host);
    return host;
}

static void stop_host(tribe_node *host, pthread_t *handlers, int threads) {
    tribe_node_shutdown(host, NULL);
    for (int i = 0; i < threads; i++) pthread_join(handlers[i], NULL);
    tribe_node_free(host);
}

static void wait_for_endpoint(tribe_node *caller) {
    double limit = now_s() + 30;
    while (!endpoint_seen(caller)) {
        if (now_s() > limit) { fprintf(stderr, "calls: the endpoint never arrived\n"); exit(1); }
        struct timespec ts = {0, 50000000};
        nanosleep(&ts, NULL);
    }
}

/* The four rows of a caller node joined to the host at `seed`. */
static void calls_from(const char *label, const char *name, const char *key, const char *seed,
                       double warm, double window) {
    tribe_node *caller = start(name, key, seed);
    pthread_t drainer;
    atomic_store(&draining, true);
    pthread_create(&drainer, NULL, drain, caller);
    wait_for_endpoint(caller);
    row(label, caller, 1, warm, window);
    row(label, caller, 16, warm, window);
    atomic_store(&draining, false);
    pthread_join(drainer, NULL);
    row_async(label, caller, 1, warm, window);
    row_async(label, caller, 16, warm, window);
    tribe_node_shutdown(caller, NULL);
    tribe_node_free(caller);
}

static void pair(const char *label, const char *key, double warm, double window) {
    char host_name[32], caller_name[32];
    snprintf(host_name, sizeof host_name, "bench-host-%s", key ? "s" : "p");
    snprintf(caller_name, sizeof caller_name, "bench-caller-%s", key ? "s" : "p");
    pthread_t handlers[8];
    tribe_node *host = start_host(host_name, key, handlers, handler_threads);
    calls_from(label, caller_name, key, tribe_node_addr(host), warm, window);
    stop_host(host, handlers, handler_threads);

    /* Sixteen blocked callers against two handler threads, as many as the
     * Rust host's tokio workers (one thread is the default: it serves the
     * c1 and asynchronous rows best, where a second waiter costs wakes). */
    if (handler_threads == 1) {
        char two[96];
        snprintf(two, sizeof two, "%s, two handler threads", label);
        host = start_host(host_name, key, handlers, 2);
        tribe_node *caller = start(caller_name, key, tribe_node_addr(host));
        pthread_t drainer;
        atomic_store(&draining, true);
        pthread_create(&drainer, NULL, drain, caller);
        wait_for_endpoint(caller);
        row(two, caller, 16, warm, window);
        atomic_store(&draining, false);
        pthread_join(drainer, NULL);
        tribe_node_shutdown(caller, NULL);
        tribe_node_free(caller);
        stop_host(host, handlers, 2);
    }

    /* Both sides on this thread: a host with no handler thread. */
    host = start_host(host_name, key, handlers, 0);
    tribe_node *caller = start(caller_name, key, tribe_node_addr(host));
    wait_for_endpoint(caller);
    row_one_thread(label, host, caller, 1, warm, window);
    row_one_thread(label, host, caller, 16, warm, window);
    tribe_node_shutdown(caller, NULL);
    tribe_node_free(caller);
    stop_host(host, handlers, 0);

    /* Both sides on this thread, both nodes in one poll group. */
    tribe_error *err = NULL;
    tribe_group *group = NULL;
    need(tribe_group_new(&group, &err), err, "group");
    start_group = group;
    host = start_host(host_name, key, handlers, 0);
    caller = start(caller_name, key, tribe_node_addr(host));
    start_group = NULL;
    wait_for_endpoint(caller);
    row_group(label, group, host, caller, 1, warm, window);
    row_group(label, group, host, caller, 16, warm, window);
    tribe_node_shutdown(caller, NULL);
    tribe_node_free(caller);
    stop_host(host, handlers, 0);
    tribe_group_free(group);
}

/* A host alone, for a caller in another process: serves until stdin ends. */
static int host_apart(const char *key) {
    pthread_t handlers[8];
    tribe_node *host = start_host("bench-host", key, handlers, handler_threads);
    printf("%s %d\n", tribe_node_addr(host), (int)getpid());
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {}
    stop_host(host, handlers, handler_threads);
    return 0;
}

static int usage_error(void) {
    fprintf(stderr, "usage: calls [--quick] | calls --host | calls --caller ADDRESS PID [--quick]\n");
    return 2;
}

int main(int argc, char **argv) {
    bool quick = strcmp(argv[argc - 1], "--quick") == 0 && argc > 1;
    double warm = quick ? 0.1 : 0.5, window = quick ? 0.5 : 3.0;
    if (getenv("TRIBE_BENCH_WORKERS")) worker_threads = (unsigned)atoi(getenv("TRIBE_BENCH_WORKERS"));
    if (getenv("TRIBE_BENCH_HANDLERS")) handler_threads = atoi(getenv("TRIBE_BENCH_HANDLERS"));
    if (handler_threads < 1 || handler_threads > 8) handler_threads = 1;
    const char *shared_key = getenv("TRIBE_BENCH_KEY");
    if (shared_key && !*shared_key) shared_key = NULL;
    if (argc > 1 && strcmp(argv[1], "--host") == 0) return argc == 2 ? host_apart(shared_key) : usage_error();
    if (argc > 1 && strcmp(argv[1], "--caller") == 0) {
        if (argc != 4 + (int)quick) return usage_error();
        host_pid = (pid_t)atoi(argv[3]);
        if (host_pid <= 0) return usage_error();
        calls_from(shared_key ? "C → C handler, sealed, apart" : "C → C handler, plaintext, apart",
                   "bench-caller", shared_key, argv[2], warm, window);
        return 0;
    }
    if (argc > 2 || (argc == 2 && !quick)) return usage_error();
    char *key = NULL;
    tribe_keygen(&key, NULL, NULL);
    pair("C → C handler, plaintext", NULL, warm, window);
    pair("C → C handler, sealed", key, warm, window);
    tribe_string_free(key);
    return 0;
}
