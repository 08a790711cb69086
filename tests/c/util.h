/* Helpers shared by the C tests: checks that stop the program with a
 * message, node start-up, waiting for a condition, and an event pump thread
 * per node that records what it saw and answers incoming calls. */
#ifndef TRIBE_TEST_UTIL_H
#define TRIBE_TEST_UTIL_H

#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tribe.h"

static inline void die(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "%s:%d: FAIL: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) die(__FILE__, __LINE__, "%s", #cond);                     \
    } while (0)

/* Runs a libtribe call that must succeed; prints the error otherwise. */
#define OK(call)                                                               \
    do {                                                                       \
        uint32_t ok_rc_ = (call);                                              \
        if (ok_rc_ != TRIBE_OK) die(__FILE__, __LINE__, "%s -> %u", #call,     \
                                    (unsigned)ok_rc_);                         \
    } while (0)

/* Runs a libtribe call passing &err, expects result `want`, frees the error. */
#define EXPECT(want, call_with_err)                                            \
    do {                                                                       \
        tribe_error *err = NULL;                                               \
        uint32_t rc_ = (call_with_err);                                        \
        if (rc_ != (uint32_t)(want))                                           \
            die(__FILE__, __LINE__, "%s -> %u (%s: %s), want %u",              \
                #call_with_err, (unsigned)rc_, tribe_result_name(rc_),         \
                err ? tribe_error_message(err) : "no error object",            \
                (unsigned)(want));                                             \
        if ((want) != TRIBE_OK) {                                              \
            if (err == NULL) die(__FILE__, __LINE__, "no error object");       \
            if (tribe_error_code(err) != rc_)                                  \
                die(__FILE__, __LINE__, "error object code differs");          \
            if (tribe_error_message(err) == NULL ||                            \
                tribe_error_message(err)[0] == '\0')                           \
                die(__FILE__, __LINE__, "empty error message");                \
        } else if (err != NULL) {                                              \
            die(__FILE__, __LINE__, "error object on success");                \
        }                                                                      \
        tribe_error_free(err);                                                 \
    } while (0)

static inline double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Polls `cond(arg)` every 50 ms for up to `seconds`. */
static inline bool wait_for(bool (*cond)(void *), void *arg, double seconds) {
    double end = now_s() + seconds;
    while (now_s() < end) {
        if (cond(arg)) return true;
        sleep_ms(50);
    }
    return cond(arg);
}

/* A blocking call made on a thread of its own (start it with
 * pthread_create(&t, NULL, timed_call_run, &call)): calls `plugin` of
 * `tribe` from `caller` with a 1-byte payload and a 20 s timeout; with
 * `retry_unserved`, calls again (for up to 15 s) while the caller does not
 * know the tribe or a member serving it yet. Records how the call ended,
 * how long it took, and when. */
typedef struct {
    tribe_node *caller;
    const char *tribe, *plugin;
    bool retry_unserved;
    uint32_t rc;
    double took, ended;
} timed_call;

static inline void *timed_call_run(void *arg) {
    timed_call *c = arg;
    double give_up = now_s() + 15;
    for (;;) {
        uint8_t *reply = NULL;
        size_t len = 0;
        double t0 = now_s();
        c->rc = tribe_node_call(c->caller, c->tribe, c->plugin, NULL, TRIBE_KIND_PROCESSOR,
                                (const uint8_t *)"x", 1, 20000, &reply, &len, NULL);
        c->ended = now_s();
        c->took = c->ended - t0;
        tribe_bytes_free(reply, len);
        bool unserved = c->rc == TRIBE_NO_PROVIDER || c->rc == TRIBE_UNKNOWN_TRIBE;
        if (!c->retry_unserved || !unserved || now_s() > give_up) return NULL;
        sleep_ms(50);
    }
}

/* A snapshot as a string (freed by the caller with tribe_string_free). */
static inline char *tribe_json(const tribe_node *n, const char *tribe) {
    char *out = NULL;
    size_t len = 0;
    uint32_t rc = tribe ? tribe_node_tribe_json(n, tribe, &out, &len, NULL)
                        : tribe_node_members_json(n, &out, &len, NULL);
    if (rc != TRIBE_OK) return NULL;
    if (strlen(out) != len) die(__FILE__, __LINE__, "length differs");
    return out;
}

/* Starts a node on 127.0.0.1:0 with the local profile. */
static inline tribe_node *start_node(const char *name, const char *key,
                                     const char *seed, const char *rack) {
    tribe_config *cfg = NULL;
    tribe_node *node = NULL;
    OK(tribe_config_new(name, &cfg, NULL));
    OK(tribe_config_set_profile(cfg, "local", NULL));
    OK(tribe_config_set_collect_facts(cfg, false, NULL));
    if (key) OK(tribe_config_add_key(cfg, key, NULL));
    if (seed) OK(tribe_config_add_seed(cfg, seed, NULL));
    if (rack) OK(tribe_config_set_fact(cfg, "rack", rack, NULL));
    tribe_error *err = NULL;
    uint32_t rc = tribe_node_start(cfg, &node, &err);
    if (rc != TRIBE_OK) die(__FILE__, __LINE__, "start %s: %s", name, tribe_error_message(err));
    tribe_config_free(cfg);
    return node;
}

/* An event pump: one thread per node takes events, counts plugin loads by
 * name and answers incoming calls the way the tests expect:
 *   upper -> the payload in upper case
 *   fail  -> an error with code "bad_input"
 *   decline -> declined: the caller's own deadline decides
 *   slow  -> kept unanswered until the pump stops (freed: "unanswered")
 *   huge  -> a reply one byte over the default max_payload (4 MiB), which
 *            reply refuses with TRIBE_TOO_LARGE (counted in too_large_told) */
#define MAX_KEPT 64
typedef struct {
    tribe_node *node;
    pthread_t thread;
    pthread_mutex_t lock;
    int plugin_loads;        /* TRIBE_EVENT_PLUGIN_LOAD of plugin "disk" */
    int artifact_loads;      /* ... of plugin "script", its JSON naming a sha256 */
    int tribe_joined_core;   /* TRIBE_EVENT_TRIBE_JOINED of tribe "core" */
    int calls_served;
    int too_large_told;      /* replies refused with TRIBE_TOO_LARGE */
    int done_events;         /* TRIBE_EVENT_CALL_DONE seen */
    uint32_t last_done_rc;
    uint64_t last_done_id;
    char last_done_reply[64];
    tribe_responder *kept[MAX_KEPT];
    int nkept;
    bool stopped;            /* next_event returned TRIBE_SHUTTING_DOWN */
} pump;

/* Answers a call with its payload in upper case, and frees the responder. */
static inline void reply_upper(tribe_responder *r) {
    size_t len = 0;
    const uint8_t *payload = tribe_responder_payload(r, &len);
    uint8_t *out = malloc(len ? len : 1);
    if (out == NULL) die(__FILE__, __LINE__, "out of memory");
    for (size_t i = 0; i < len; i++)
        out[i] = (payload[i] >= 'a' && payload[i] <= 'z') ? payload[i] - 32 : payload[i];
    OK(tribe_responder_reply(r, out, len, NULL));
    free(out);
    tribe_responder_free(r);
}

static inline void answer(pump *p, tribe_responder *r) {
    const char *plugin = tribe_responder_plugin(r);
    size_t len = 0;
    const uint8_t *payload = tribe_responder_payload(r, &len);
    if (strcmp(plugin, "upper") == 0) {
        reply_upper(r);
    } else if (strcmp(plugin, "fail") == 0) {
        if (len == 6 && memcmp(payload, "latin1", 6) == 0) {
            /* Text in another encoding is passed on, marked, not refused. */
            OK(tribe_responder_fail(r, "bad_\xff", "caf\xe9 closed", NULL));
        } else {
            OK(tribe_responder_fail(r, "bad_input", "cannot handle this payload", NULL));
        }
        tribe_responder_free(r);
    } else if (strcmp(plugin, "huge") == 0) {
        size_t big = (4u << 20) + 1;
        uint8_t *out = calloc(big, 1);
        tribe_error *err = NULL;
        uint32_t rc = tribe_responder_reply(r, out, big, &err);
        free(out);
        if (rc != TRIBE_TOO_LARGE || err == NULL || tribe_error_code(err) != TRIBE_TOO_LARGE)
            die(__FILE__, __LINE__, "huge reply -> %u", (unsigned)rc);
        tribe_error_free(err);
        /* The call is answered (with "too_large"): nothing more to send. */
        if (tribe_responder_reply(r, NULL, 0, NULL) != TRIBE_CONSUMED)
            die(__FILE__, __LINE__, "reply after a refused reply");
        pthread_mutex_lock(&p->lock);
        p->too_large_told++;
        pthread_mutex_unlock(&p->lock);
        tribe_responder_free(r);
    } else if (strcmp(plugin, "decline") == 0) {
        OK(tribe_responder_decline(r, NULL));
        if (tribe_responder_reply(r, payload, len, NULL) != TRIBE_CONSUMED)
            die(__FILE__, __LINE__, "reply after decline");
        tribe_responder_free(r);
    } else {
        pthread_mutex_lock(&p->lock);
        if (p->nkept < MAX_KEPT) {
            p->kept[p->nkept++] = r;
            r = NULL;
        }
        pthread_mutex_unlock(&p->lock);
        tribe_responder_free(r);
    }
}

static inline void *pump_run(void *arg) {
    pump *p = arg;
    for (;;) {
        tribe_event *ev = NULL;
        uint32_t rc = tribe_node_next_event(p->node, 200, &ev, NULL);
        if (rc == TRIBE_SHUTTING_DOWN) break;
        if (rc != TRIBE_OK) die(__FILE__, __LINE__, "next_event -> %u", (unsigned)rc);
        if (ev == NULL) continue;
        uint32_t kind = tribe_event_kind(ev);
        const char *subject = NULL, *tribe = NULL;
        if (kind == TRIBE_EVENT_PLUGIN_LOAD) {
            OK(tribe_event_subject(ev, &subject, NULL));
            pthread_mutex_lock(&p->lock);
            if (strcmp(subject, "disk") == 0) p->plugin_loads++;
            pthread_mutex_unlock(&p->lock);
            if (strcmp(subject, "script") == 0) {
                char *json = NULL;
                OK(tribe_event_json(ev, &json, NULL, NULL));
                pthread_mutex_lock(&p->lock);
                if (strstr(json, "\"sha256\":\"") != NULL) p->artifact_loads++;
                pthread_mutex_unlock(&p->lock);
                tribe_string_free(json);
            }
        } else if (kind == TRIBE_EVENT_TRIBE_JOINED) {
            OK(tribe_event_tribe(ev, &tribe, NULL));
            pthread_mutex_lock(&p->lock);
            if (strcmp(tribe, "core") == 0) p->tribe_joined_core++;
            pthread_mutex_unlock(&p->lock);
        } else if (kind == TRIBE_EVENT_CALL) {
            tribe_responder *r = NULL;
            OK(tribe_event_take_responder(ev, &r, NULL));
            pthread_mutex_lock(&p->lock);
            p->calls_served++;
            pthread_mutex_unlock(&p->lock);
            answer(p, r);
        } else if (kind == TRIBE_EVENT_CALL_DONE) {
            uint64_t id = 0;
            uint8_t *reply = NULL;
            size_t len = 0;
            OK(tribe_event_call_id(ev, &id, NULL));
            uint32_t done = tribe_event_take_reply(ev, &reply, &len, NULL);
            pthread_mutex_lock(&p->lock);
            p->done_events++;
            p->last_done_rc = done;
            p->last_done_id = id;
            memset(p->last_done_reply, 0, sizeof p->last_done_reply);
            if (reply) memcpy(p->last_done_reply, reply, len < 63 ? len : 63);
            pthread_mutex_unlock(&p->lock);
            tribe_bytes_free(reply, len);
        }
        /* Every event, whatever its kind, renders as JSON with its kind. */
        char *json = NULL;
        OK(tribe_event_json(ev, &json, NULL, NULL));
        if (strstr(json, "\"kind\"") == NULL) die(__FILE__, __LINE__, "event json %s", json);
        tribe_string_free(json);
        tribe_event_free(ev);
    }
    pthread_mutex_lock(&p->lock);
    p->stopped = true;
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

static inline void pump_start(pump *p, tribe_node *node) {
    memset(p, 0, sizeof *p);
    p->node = node;
    pthread_mutex_init(&p->lock, NULL);
    if (pthread_create(&p->thread, NULL, pump_run, p) != 0) die(__FILE__, __LINE__, "pthread_create");
}

static inline int pump_get(pump *p, int *field) {
    pthread_mutex_lock(&p->lock);
    int v = *field;
    pthread_mutex_unlock(&p->lock);
    return v;
}

/* Joins the pump (the node must be shut down) and frees kept responders. */
static inline void pump_join(pump *p) {
    pthread_join(p->thread, NULL);
    for (int i = 0; i < p->nkept; i++) tribe_responder_free(p->kept[i]);
    p->nkept = 0;
    pthread_mutex_destroy(&p->lock);
}

#endif
