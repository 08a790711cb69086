/* Calls a C host holds without answering:
 * - a host that does not poll its events keeps at most its serving places
 *   of calls queued (max_serving): later calls are refused as overloaded,
 *   also once the queued ones timed out at their callers;
 * - a responder kept across tribe_node_free turns abandoned, and its caller
 *   learns at the free (TRIBE_DISCONNECTED), not when the responder goes. */
#include "util.h"

#define SERVING 4

static bool endpoint_seen(void *arg) {
    const tribe_node *caller = arg;
    char *json = tribe_json(caller, NULL);
    bool seen = json && strstr(json, "\"name\":\"held\"") != NULL;
    tribe_string_free(json);
    return seen;
}

static tribe_node *start_host(void) {
    tribe_config *cfg = NULL;
    tribe_node *node = NULL;
    OK(tribe_config_new("holder", &cfg, NULL));
    OK(tribe_config_set_profile(cfg, "local", NULL));
    OK(tribe_config_set_collect_facts(cfg, false, NULL));
    OK(tribe_config_set_rpc_limits(cfg, 0, 0, 0, SERVING, NULL));
    OK(tribe_node_start(cfg, &node, NULL));
    tribe_config_free(cfg);
    OK(tribe_node_create_tribe(node, "t", NULL));
    OK(tribe_node_join(node, "t", NULL, NULL));
    OK(tribe_node_serve(node, "held", "1", TRIBE_KIND_PROCESSOR, NULL));
    return node;
}

/* Starts n asynchronous calls and waits for their outcomes. */
static void wave(tribe_node *caller, int n, uint32_t timeout_ms, uint32_t *rcs) {
    for (int i = 0; i < n; i++) {
        uint64_t id = 0;
        OK(tribe_node_call_async(caller, "t", "held", NULL, TRIBE_KIND_PROCESSOR,
                                 (const uint8_t *)"x", 1, timeout_ms, &id, NULL));
    }
    int done = 0;
    double end = now_s() + 15;
    while (done < n && now_s() < end) {
        tribe_event *ev = NULL;
        OK(tribe_node_next_event(caller, 100, &ev, NULL));
        if (ev == NULL) continue;
        if (tribe_event_kind(ev) == TRIBE_EVENT_CALL_DONE) {
            uint8_t *reply = NULL;
            size_t len = 0;
            tribe_error *err = NULL;
            rcs[done++] = tribe_event_take_reply(ev, &reply, &len, &err);
            tribe_error_free(err);
            tribe_bytes_free(reply, len);
        }
        tribe_event_free(ev);
    }
    CHECK(done == n);
}

static bool abandoned(void *r) { return tribe_responder_is_abandoned(r); }

/* Takes every call event queued at the host: how many there were. With
 * `want_abandoned`, each responder must turn abandoned: the host's clock
 * of the call's budget started when the request arrived, so it may run a
 * little past the caller's. */
static int drain_calls(tribe_node *host, bool want_abandoned) {
    int calls = 0;
    for (;;) {
        tribe_event *ev = NULL;
        uint32_t rc = tribe_node_next_event(host, 0, &ev, NULL);
        if (rc == TRIBE_SHUTTING_DOWN) return calls;
        OK(rc);
        if (ev == NULL) return calls;
        if (tribe_event_kind(ev) == TRIBE_EVENT_CALL) {
            tribe_responder *r = NULL;
            OK(tribe_event_take_responder(ev, &r, NULL));
            if (want_abandoned) CHECK(wait_for(abandoned, r, 5));
            tribe_responder_free(r);
            calls++;
        }
        tribe_event_free(ev);
    }
}

int main(void) {
    tribe_node *host = start_host();
    tribe_node *caller = start_node("asker", NULL, tribe_node_addr(host), NULL);
    CHECK(wait_for(endpoint_seen, caller, 30));

    /* The host does not poll: the first wave fills its places and times
     * out; the next waves find the places still held by the queue. The
     * first wave's calls must all reach the host (a first call also opens
     * the stream), so they get 2 s, not a budget a loaded box may spend
     * before they leave; a refusal ends a call at once, so the later
     * waves' 5 s only matter if they are not refused (then they time out,
     * as they would have with 300 ms). */
    uint32_t rcs[SERVING];
    wave(caller, SERVING, 2000, rcs);
    for (int i = 0; i < SERVING; i++) CHECK(rcs[i] == TRIBE_TIMEOUT);
    for (int w = 0; w < 3; w++) {
        wave(caller, SERVING, 5000, rcs);
        for (int i = 0; i < SERVING; i++) {
            if (rcs[i] != TRIBE_OVERLOADED)
                die(__FILE__, __LINE__, "wave %d call %d: %s, want overloaded", w + 2, i,
                    tribe_result_name(rcs[i]));
        }
    }
    int queued = drain_calls(host, true);
    if (queued != SERVING) die(__FILE__, __LINE__, "%d calls were queued, want %d", queued, SERVING);

    /* The places came back with the responders. */
    timed_call c = {.caller = caller, .tribe = "t", .plugin = "held"};
    pthread_t t;
    pthread_create(&t, NULL, timed_call_run, &c);
    tribe_responder *r = NULL;
    double end = now_s() + 10;
    while (r == NULL && now_s() < end) {
        tribe_event *ev = NULL;
        OK(tribe_node_next_event(host, 100, &ev, NULL));
        if (ev != NULL && tribe_event_kind(ev) == TRIBE_EVENT_CALL) OK(tribe_event_take_responder(ev, &r, NULL));
        tribe_event_free(ev);
    }
    CHECK(r != NULL);
    CHECK(!tribe_responder_is_abandoned(r));
    /* What is left of the budget counts down from the call's arrival (the
     * call waits 20 s at most). */
    uint64_t budget = tribe_responder_budget_us(r);
    CHECK(budget > 10000000 && budget <= 20000000);
    CHECK(tribe_responder_remaining_us(r) <= budget);
    sleep_ms(300);
    CHECK(tribe_responder_remaining_us(r) + 300000 <= budget);
    CHECK(tribe_responder_remaining_us(NULL) == 0);

    /* Kept across the host's stop and free: the caller learns at the free. */
    OK(tribe_node_shutdown(host, NULL));
    drain_calls(host, false);
    double freed = now_s();
    tribe_node_free(host);
    CHECK(tribe_responder_is_abandoned(r));
    pthread_join(t, NULL);
    if (c.rc != TRIBE_DISCONNECTED)
        die(__FILE__, __LINE__, "the held call ended %s, want disconnected", tribe_result_name(c.rc));
    /* The free first waits its 2 s grace for this unanswered call, then
     * cuts the stream; learning only when the responder goes would end
     * the call at its 20 s timeout (the responder goes after the join). */
    if (c.ended - freed > 6.0)
        die(__FILE__, __LINE__, "the held call ended %.1f s after the free", c.ended - freed);
    CHECK(tribe_responder_reply(r, (const uint8_t *)"late", 4, NULL) == TRIBE_OK);
    tribe_responder_free(r);

    OK(tribe_node_shutdown(caller, NULL));
    drain_calls(caller, false);
    tribe_node_free(caller);

    /* Asynchronous calls a stop ends: the counters read after it (the
     * final ones) show them ended, none still in flight (a call ended by
     * its own node's stop counts under no outcome, as in every face). */
    host = start_host();
    caller = start_node("asker-2", NULL, tribe_node_addr(host), NULL);
    CHECK(wait_for(endpoint_seen, caller, 30));
    for (int i = 0; i < 3; i++) {
        uint64_t id = 0;
        OK(tribe_node_call_async(caller, "t", "held", NULL, TRIBE_KIND_PROCESSOR,
                                 (const uint8_t *)"x", 1, 20000, &id, NULL));
    }
    tribe_responder *held[3] = {NULL, NULL, NULL};
    int arrived = 0;
    end = now_s() + 10;
    while (arrived < 3 && now_s() < end) {
        tribe_event *ev = NULL;
        OK(tribe_node_next_event(host, 100, &ev, NULL));
        if (ev != NULL && tribe_event_kind(ev) == TRIBE_EVENT_CALL)
            OK(tribe_event_take_responder(ev, &held[arrived++], NULL));
        tribe_event_free(ev);
    }
    CHECK(arrived == 3);
    OK(tribe_node_shutdown(caller, NULL));
    char *counters = NULL;
    OK(tribe_node_counters_json(caller, &counters, NULL, NULL));
    if (!strstr(counters, "\"in_flight\":0,"))
        die(__FILE__, __LINE__, "counters after the stop: %s", counters);
    tribe_string_free(counters);
    drain_calls(caller, false);
    tribe_node_free(caller);
    for (int i = 0; i < 3; i++) tribe_responder_free(held[i]);
    OK(tribe_node_shutdown(host, NULL));
    drain_calls(host, false);
    tribe_node_free(host);
    printf("held_calls: ok\n");
    return 0;
}
