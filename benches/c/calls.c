/* Loopback call benchmark through the C ABI: a C caller (c threads calling
 * tribe_node_call in a loop) and a C handler (2 threads taking call events
 * and replying with the payload), plaintext and sealed, 100 B payloads,
 * concurrency 1 and 16. Same topology as `cargo bench --bench rpc`: two
 * nodes in one process, the host a member of tribe "bench" by hand, the
 * caller not a member, so every call crosses the loopback call stream.
 * Prints markdown rows: | path | concurrency | calls/s | p50 µs | p99 µs | errors |
 * TRIBE_BENCH_WORKERS (runtime threads per node, default 2) and
 * TRIBE_BENCH_HANDLERS (threads answering calls, default 2) vary the setup.
 *
 *   calls [--quick]
 */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tribe.h"

#define PAYLOAD 100
#define MAX_SAMPLES 2000000

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void need(uint32_t rc, tribe_error *err, const char *what) {
    if (rc != TRIBE_OK) {
        fprintf(stderr, "calls: %s: %s\n", what, tribe_error_message(err));
        exit(1);
    }
}

static unsigned worker_threads = 2; /* TRIBE_BENCH_WORKERS */
static int handler_threads = 2;      /* TRIBE_BENCH_HANDLERS */

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
    need(tribe_node_start(cfg, &node, &err), err, "start");
    tribe_config_free(cfg);
    return node;
}

/* The C handler: echo the payload back. */
static void *serve(void *arg) {
    tribe_node *host = arg;
    for (;;) {
        tribe_event *ev = NULL;
        if (tribe_node_next_event(host, -1, &ev, NULL) != TRIBE_OK) break;
        if (ev && tribe_event_kind(ev) == TRIBE_EVENT_CALL) {
            tribe_responder *r = NULL;
            if (tribe_event_take_responder(ev, &r, NULL) == TRIBE_OK) {
                size_t len = 0;
                const uint8_t *p = tribe_responder_payload(r, &len);
                tribe_responder_reply(r, p, len, NULL);
                tribe_responder_free(r);
            }
        }
        tribe_event_free(ev);
    }
    return NULL;
}

/* Drains the caller's events so its queue stays small. */
static void *drain(void *arg) {
    tribe_node *n = arg;
    tribe_event *ev = NULL;
    while (tribe_node_next_event(n, -1, &ev, NULL) == TRIBE_OK) tribe_event_free(ev);
    return NULL;
}

typedef struct {
    tribe_node *caller;
    double warm_end, end;
    uint32_t *samples; /* latencies in ns/100 */
    size_t n;
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
    double t = now_s();
    for (int i = 0; i < c; i++) {
        ws[i] = (worker){caller, t + warm, t + warm + window, malloc(MAX_SAMPLES * 4), 0, 0};
        pthread_create(&ts[i], NULL, call_loop, &ws[i]);
    }
    size_t total = 0;
    long errors = 0;
    for (int i = 0; i < c; i++) {
        pthread_join(ts[i], NULL);
        total += ws[i].n;
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
    double p50 = total ? all[total / 2] / 10.0 : 0, p99 = total ? all[total * 99 / 100] / 10.0 : 0;
    printf("| %s | %d | %.0f | %.0f | %.0f | %ld |\n", label, c, total / window, p50, p99, errors);
    fflush(stdout);
    free(all);
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

static void pair(const char *label, const char *key, double warm, double window) {
    char host_name[32], caller_name[32];
    snprintf(host_name, sizeof host_name, "bench-host-%s", key ? "s" : "p");
    snprintf(caller_name, sizeof caller_name, "bench-caller-%s", key ? "s" : "p");
    tribe_node *host = start(host_name, key, NULL);
    tribe_node *caller = start(caller_name, key, tribe_node_addr(host));
    tribe_error *err = NULL;
    need(tribe_node_create_tribe(host, "bench", &err), err, "create");
    need(tribe_node_join(host, "bench", NULL, &err), err, "join");
    need(tribe_node_serve(host, "echo", "1", TRIBE_KIND_PROCESSOR, &err), err, "serve");
    pthread_t handlers[8], drainer;
    for (int i = 0; i < handler_threads; i++) pthread_create(&handlers[i], NULL, serve, host);
    pthread_create(&drainer, NULL, drain, caller);
    double limit = now_s() + 30;
    while (!endpoint_seen(caller)) {
        if (now_s() > limit) { fprintf(stderr, "calls: the endpoint never arrived\n"); exit(1); }
        struct timespec ts = {0, 50000000};
        nanosleep(&ts, NULL);
    }
    row(label, caller, 1, warm, window);
    row(label, caller, 16, warm, window);
    tribe_node_shutdown(caller, NULL);
    tribe_node_shutdown(host, NULL);
    for (int i = 0; i < handler_threads; i++) pthread_join(handlers[i], NULL);
    pthread_join(drainer, NULL);
    tribe_node_free(caller);
    tribe_node_free(host);
}

int main(int argc, char **argv) {
    bool quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    double warm = quick ? 0.1 : 0.5, window = quick ? 0.5 : 3.0;
    if (getenv("TRIBE_BENCH_WORKERS")) worker_threads = (unsigned)atoi(getenv("TRIBE_BENCH_WORKERS"));
    if (getenv("TRIBE_BENCH_HANDLERS")) handler_threads = atoi(getenv("TRIBE_BENCH_HANDLERS"));
    if (handler_threads < 1 || handler_threads > 8) handler_threads = 2;
    char *key = NULL;
    tribe_keygen(&key, NULL, NULL);
    pair("C → C handler, plaintext", NULL, warm, window);
    pair("C → C handler, sealed", key, warm, window);
    tribe_string_free(key);
    return 0;
}
