/* A poll group: two encrypted nodes of one process whose events one thread
 * takes, waiting in tribe_group_wait only:
 * - b serves "upper", answered by that thread; a calls it 200 times
 *   asynchronously and its completions come to the same thread;
 * - the group handle is freed before the nodes, which go on working;
 * - tribe_group_wake ends a wait at once; a node's shutdown ends a wait,
 *   then its queue hands out TRIBE_SHUTTING_DOWN;
 * - misuse: NULL arguments, a consumed config. */
#include "util.h"

#define CALLS 200

typedef struct {
    int done_ok;
    int in_flight;
    bool provider_seen;
    bool served;
} tally;

/* Takes what both nodes queued: answers calls at b, counts completions at a.
 * A completion that says the tribe or provider is not known yet is retried
 * by the caller of this function. Returns how many retry-worthy ones came. */
static int take_all(tribe_node *a, tribe_node *b, tally *t) {
    int not_yet = 0;
    tribe_node *nodes[2] = {a, b};
    for (int i = 0; i < 2; i++) {
        tribe_event *evs[32];
        size_t n = 0;
        OK(tribe_node_next_events(nodes[i], 0, evs, 32, &n, NULL));
        for (size_t k = 0; k < n; k++) {
            uint32_t kind = tribe_event_kind(evs[k]);
            if (kind == TRIBE_EVENT_CALL) {
                CHECK(i == 1);
                tribe_responder *r = NULL;
                OK(tribe_event_take_responder(evs[k], &r, NULL));
                reply_upper(r);
                t->served = true;
            } else if (kind == TRIBE_EVENT_CALL_DONE) {
                CHECK(i == 0);
                uint8_t *reply = NULL;
                size_t len = 0;
                tribe_error *err = NULL;
                uint32_t rc = tribe_event_take_reply(evs[k], &reply, &len, &err);
                t->in_flight--;
                if (rc == TRIBE_OK) {
                    CHECK(len == 5 && memcmp(reply, "GROUP", 5) == 0);
                    t->done_ok++;
                    t->provider_seen = true;
                } else if (rc == TRIBE_NO_PROVIDER || rc == TRIBE_UNKNOWN_TRIBE) {
                    not_yet++;
                } else {
                    die(__FILE__, __LINE__, "call -> %u (%s)", (unsigned)rc, tribe_error_message(err));
                }
                tribe_error_free(err);
                tribe_bytes_free(reply, len);
            }
            tribe_event_free(evs[k]);
        }
    }
    return not_yet;
}

static void call(tribe_node *a, tally *t) {
    uint64_t id = 0;
    OK(tribe_node_call_async(a, "t", "upper", NULL, TRIBE_KIND_PROCESSOR, (const uint8_t *)"group", 5,
                             5000, &id, NULL));
    t->in_flight++;
}

static tribe_node *start_in(tribe_group *g, const char *name, const char *key, const char *seed) {
    tribe_config *cfg = NULL;
    tribe_node *node = NULL;
    OK(tribe_config_new(name, &cfg, NULL));
    OK(tribe_config_set_profile(cfg, "local", NULL));
    OK(tribe_config_set_collect_facts(cfg, false, NULL));
    OK(tribe_config_add_key(cfg, key, NULL));
    if (seed) OK(tribe_config_add_seed(cfg, seed, NULL));
    OK(tribe_config_set_group(cfg, g, NULL));
    OK(tribe_node_start(cfg, &node, NULL));
    /* A consumed config refuses a group too. */
    EXPECT(TRIBE_CONSUMED, tribe_config_set_group(cfg, g, &err));
    tribe_config_free(cfg);
    return node;
}

/* Waits in the group until a whole quiet wait (no notification in 200 ms)
 * passes, taking what comes, so that a wait that follows ends only for what
 * happens next. */
static void quiet(tribe_group *g, tribe_node *a, tribe_node *b, tally *t) {
    double end = now_s() + 20;
    for (;;) {
        CHECK(now_s() < end);
        double t0 = now_s();
        OK(tribe_group_wait(g, 200, NULL));
        bool quiet = now_s() - t0 >= 0.19;
        take_all(a, b, t);
        if (quiet) return;
    }
}

static bool serves_hold(void *arg) {
    char *json = tribe_json(arg, NULL);
    bool seen = json != NULL && strstr(json, "\"name\":\"hold\"") != NULL;
    tribe_string_free(json);
    return seen;
}

static void *wait_long(void *arg) {
    double t0 = now_s();
    OK(tribe_group_wait(arg, 20000, NULL));
    double *took = malloc(sizeof *took);
    *took = now_s() - t0;
    return took;
}

/* Checks that `act(arg)` ends a wait of up to 20 s that another thread
 * began in the group. */
static void ends_a_wait(tribe_group *g, void (*act)(void *), void *arg) {
    pthread_t waiter;
    void *took = NULL;
    CHECK(pthread_create(&waiter, NULL, wait_long, g) == 0);
    sleep_ms(100);
    act(arg);
    CHECK(pthread_join(waiter, &took) == 0);
    CHECK(*(double *)took < 5.0);
    free(took);
}

static void wake(void *g) { OK(tribe_group_wake(g, NULL)); }

static void shut_down(void *node) { OK(tribe_node_shutdown(node, NULL)); }

int main(void) {
    char *key = NULL;
    OK(tribe_keygen(&key, NULL, NULL));

    /* Misuse. */
    EXPECT(TRIBE_NULL_ARGUMENT, tribe_group_new(NULL, &err));
    EXPECT(TRIBE_NULL_ARGUMENT, tribe_group_wait(NULL, 0, &err));
    EXPECT(TRIBE_NULL_ARGUMENT, tribe_group_wake(NULL, &err));
    tribe_group_free(NULL);
    tribe_config *cfg = NULL;
    OK(tribe_config_new("x", &cfg, NULL));
    EXPECT(TRIBE_NULL_ARGUMENT, tribe_config_set_group(cfg, NULL, &err));
    tribe_config_free(cfg);

    tribe_group *g = NULL;
    OK(tribe_group_new(&g, NULL));
    /* An empty group's wait times out. */
    double t0 = now_s();
    OK(tribe_group_wait(g, 50, NULL));
    CHECK(now_s() - t0 >= 0.04);
    OK(tribe_group_wait(g, 0, NULL));

    tribe_node *a = start_in(g, "grp-a", key, NULL);
    tribe_node *b = start_in(g, "grp-b", key, tribe_node_addr(a));
    OK(tribe_node_add_policy(a, "everyone", "t", "true", NULL));
    OK(tribe_node_serve(b, "upper", "1", TRIBE_KIND_PROCESSOR, NULL));

    /* Until a sees b serving it: one call at a time, retried. */
    tally t = {0};
    double end = now_s() + 20;
    call(a, &t);
    while (!t.provider_seen && now_s() < end) {
        OK(tribe_group_wait(g, 100, NULL));
        int retry = take_all(a, b, &t);
        for (int i = 0; i < retry; i++) {
            sleep_ms(50);
            call(a, &t);
        }
    }
    CHECK(t.provider_seen && t.served);

    /* One thread, waiting in the group only, drives both nodes. */
    int started = 0;
    t.done_ok = 0;
    end = now_s() + 30;
    while ((t.done_ok < CALLS || t.in_flight > 0) && now_s() < end) {
        while (started < CALLS && t.in_flight < 16) {
            call(a, &t);
            started++;
        }
        OK(tribe_group_wait(g, 100, NULL));
        CHECK(take_all(a, b, &t) == 0);
    }
    CHECK(t.done_ok == CALLS && t.in_flight == 0);
    printf("one thread served and completed %d calls between two nodes of a group\n", CALLS);

    /* A wake, and a member's shutdown, end a wait. */
    quiet(g, a, b, &t);
    ends_a_wait(g, wake, g);
    tribe_node *c = start_in(g, "grp-c", key, NULL);
    quiet(g, a, b, &t);
    tribe_event *evs[64];
    size_t got = 0;
    OK(tribe_node_next_events(c, 0, evs, 64, &got, NULL));
    for (size_t i = 0; i < got; i++) tribe_event_free(evs[i]);
    ends_a_wait(g, shut_down, c);
    for (;;) {
        tribe_event *ev = NULL;
        uint32_t rc = tribe_node_next_event(c, 0, &ev, NULL);
        if (rc == TRIBE_SHUTTING_DOWN) break;
        OK(rc);
        CHECK(ev != NULL);
        tribe_event_free(ev);
    }
    tribe_node_free(c);
    printf("a wake and a member's shutdown ended waits\n");

    /* A member freed after a graceful shutdown with a call still queued:
     * its stream is cut, so the caller learns at once, not at its deadline
     * (the group's runtime outlives the member). */
    tribe_node *h = start_in(g, "grp-h", key, tribe_node_addr(a));
    OK(tribe_node_serve(h, "hold", "1", TRIBE_KIND_PROCESSOR, NULL));
    CHECK(wait_for(serves_hold, a, 20));
    timed_call hc = {.caller = a, .tribe = "t", .plugin = "hold", .retry_unserved = true};
    pthread_t holder;
    CHECK(pthread_create(&holder, NULL, timed_call_run, &hc) == 0);
    sleep_ms(500); /* the call is queued at h, never taken */
    OK(tribe_node_shutdown(h, NULL));
    tribe_node_free(h);
    CHECK(pthread_join(holder, NULL) == 0);
    CHECK(hc.rc != TRIBE_OK && hc.rc != TRIBE_TIMEOUT);
    CHECK(hc.took < 8.0);
    printf("a member freed with a call queued cut its stream: the caller got %s after %.1f s\n",
           tribe_result_name(hc.rc), hc.took);

    /* The handle may go: the nodes keep what they share, and a node's own
     * wait drives the streams. */
    tribe_group_free(g);
    g = NULL;
    started = 0;
    t.done_ok = 0;
    end = now_s() + 30;
    while ((t.done_ok < 20 || t.in_flight > 0) && now_s() < end) {
        if (started < 20 && t.in_flight == 0) {
            call(a, &t);
            started++;
        }
        tribe_event *ev = NULL;
        OK(tribe_node_next_event(b, 20, &ev, NULL));
        if (ev != NULL) {
            if (tribe_event_kind(ev) == TRIBE_EVENT_CALL) {
                tribe_responder *r = NULL;
                OK(tribe_event_take_responder(ev, &r, NULL));
                OK(tribe_responder_reply(r, (const uint8_t *)"GROUP", 5, NULL));
                tribe_responder_free(r);
            }
            tribe_event_free(ev);
        }
        CHECK(take_all(a, b, &t) == 0);
    }
    CHECK(t.done_ok == 20 && t.in_flight == 0);
    printf("after the group handle's free, its nodes still call each other\n");

    /* A responder kept past its node's free reads as abandoned as the free
     * returns (the node's streams outlive it a moment in a group's
     * runtime). */
    call(a, &t);
    tribe_responder *held = NULL;
    end = now_s() + 10;
    while (held == NULL && now_s() < end) {
        tribe_event *ev = NULL;
        OK(tribe_node_next_event(b, 20, &ev, NULL));
        if (ev != NULL && tribe_event_kind(ev) == TRIBE_EVENT_CALL) OK(tribe_event_take_responder(ev, &held, NULL));
        tribe_event_free(ev);
    }
    CHECK(held != NULL && !tribe_responder_is_abandoned(held));
    tribe_node_shutdown(b, NULL);
    tribe_node_shutdown(a, NULL);
    for (;;) {
        tribe_event *ev = NULL;
        uint32_t rc = tribe_node_next_event(b, 1000, &ev, NULL);
        if (rc == TRIBE_SHUTTING_DOWN) break;
        OK(rc);
        tribe_event_free(ev);
    }
    tribe_node_free(b);
    CHECK(tribe_responder_is_abandoned(held));
    tribe_responder_free(held);
    tribe_node_free(a);
    tribe_string_free(key);
    return 0;
}
