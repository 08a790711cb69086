/* Calls go on while no host thread waits for events. A thread that waits in
 * tribe_node_next_event(s) reads the node's call streams itself; when none
 * waits (a daemon that polls the event fd, or one busy elsewhere), libtribe's
 * own thread must: asynchronous calls complete and incoming calls arrive
 * with nobody inside libtribe, and a host that waits again takes over. */
#include "util.h"

#include <poll.h>

static tribe_node *host, *caller;

static bool sees_upper(void *arg) {
    (void)arg;
    char *json = tribe_json(caller, NULL);
    bool ok = json && strstr(json, "\"name\":\"upper\"") != NULL;
    tribe_string_free(json);
    return ok;
}

/* Waits for the event fd of `n` to turn readable, without calling libtribe. */
static bool fd_readable(tribe_node *n, int ms) {
    struct pollfd p = {tribe_node_event_fd(n), POLLIN, 0};
    return poll(&p, 1, ms) == 1 && (p.revents & POLLIN);
}

/* Takes completions of calls, by id, without waiting: what is queued, or
 * with `look`, what the node's sockets hold too (tribe_node_poll_events). */
static int take_done(tribe_node *n, uint64_t *ids, int nids, const char *want, bool look) {
    int done = 0;
    tribe_event *evs[64];
    size_t k = 0;
    while ((look ? tribe_node_poll_events(n, evs, 64, &k, NULL)
                 : tribe_node_next_events(n, 0, evs, 64, &k, NULL)) == TRIBE_OK &&
           k > 0) {
        for (size_t i = 0; i < k; i++) {
            if (tribe_event_kind(evs[i]) == TRIBE_EVENT_CALL_DONE) {
                uint64_t id = 0;
                uint8_t *reply = NULL;
                size_t len = 0;
                OK(tribe_event_call_id(evs[i], &id, NULL));
                OK(tribe_event_take_reply(evs[i], &reply, &len, NULL));
                CHECK(len == strlen(want) && memcmp(reply, want, len) == 0);
                tribe_bytes_free(reply, len);
                for (int j = 0; j < nids; j++)
                    if (ids[j] == id) {
                        ids[j] = 0;
                        done++;
                    }
            }
            tribe_event_free(evs[i]);
        }
    }
    return done;
}

/* The host's event loop: it polls the event fd and takes what is queued
 * without ever waiting inside libtribe, answering calls in upper case. */
static int served;

static void *poll_loop(void *arg) {
    (void)arg;
    for (;;) {
        fd_readable(host, 200);
        tribe_event *evs[64];
        size_t k = 0;
        uint32_t rc = tribe_node_next_events(host, 0, evs, 64, &k, NULL);
        if (rc == TRIBE_SHUTTING_DOWN) return NULL;
        CHECK(rc == TRIBE_OK);
        for (size_t i = 0; i < k; i++) {
            tribe_responder *r = NULL;
            if (tribe_event_kind(evs[i]) == TRIBE_EVENT_CALL &&
                tribe_event_take_responder(evs[i], &r, NULL) == TRIBE_OK) {
                reply_upper(r);
                served++;
            }
            tribe_event_free(evs[i]);
        }
    }
}

int main(void) {
    host = start_node("quiet-host", NULL, NULL, "r1");
    caller = start_node("quiet-caller", NULL, tribe_node_addr(host), "r1");
    EXPECT(TRIBE_OK, tribe_node_create_tribe(host, "quiet", &err));
    EXPECT(TRIBE_OK, tribe_node_join(host, "quiet", NULL, &err));
    EXPECT(TRIBE_OK, tribe_node_serve(host, "upper", "1", TRIBE_KIND_PROCESSOR, &err));
    pthread_t host_loop;
    CHECK(pthread_create(&host_loop, NULL, poll_loop, NULL) == 0);
    CHECK(wait_for(sees_upper, NULL, 15));

    /* Nobody waits on either node: calls arrive, answers too. */
    uint64_t ids[20];
    for (int i = 0; i < 20; i++)
        EXPECT(TRIBE_OK, tribe_node_call_async(caller, "quiet", "upper", NULL, TRIBE_KIND_PROCESSOR,
                                               (const uint8_t *)"quiet", 5, 5000, &ids[i], &err));
    int done = 0;
    double end = now_s() + 10;
    while (done < 20 && now_s() < end) {
        if (!fd_readable(caller, 1000)) continue;
        done += take_done(caller, ids, 20, "QUIET", false);
    }
    CHECK(done == 20);
    printf("20 asynchronous calls served and completed with no thread waiting in libtribe\n");

    /* A thread that waits takes over, and gives way again when it leaves. */
    for (int round = 0; round < 3; round++) {
        uint64_t id = 0;
        EXPECT(TRIBE_OK, tribe_node_call_async(caller, "quiet", "upper", NULL, TRIBE_KIND_PROCESSOR,
                                               (const uint8_t *)"again", 5, 5000, &id, &err));
        tribe_event *ev = NULL;
        double t0 = now_s();
        while (!ev && now_s() - t0 < 10) {
            EXPECT(TRIBE_OK, tribe_node_next_event(caller, 1000, &ev, &err));
            if (ev && tribe_event_kind(ev) != TRIBE_EVENT_CALL_DONE) {
                tribe_event_free(ev);
                ev = NULL;
            }
        }
        CHECK(ev != NULL);
        uint8_t *reply = NULL;
        size_t len = 0;
        OK(tribe_event_take_reply(ev, &reply, &len, NULL));
        CHECK(len == 5 && memcmp(reply, "AGAIN", 5) == 0);
        tribe_bytes_free(reply, len);
        tribe_event_free(ev);
        uint64_t later = 0;
        EXPECT(TRIBE_OK, tribe_node_call_async(caller, "quiet", "upper", NULL, TRIBE_KIND_PROCESSOR,
                                               (const uint8_t *)"again", 5, 5000, &later, &err));
        sleep_ms(100);
        /* Other events (a member's update, say) may come first and turn
         * the fd readable: take them and go on looking, for 10 s, without
         * ever waiting inside libtribe. */
        int taken = 0;
        double until = now_s() + 10;
        while (taken == 0 && now_s() < until) {
            if (!fd_readable(caller, 1000)) continue;
            taken += take_done(caller, &later, 1, "AGAIN", false);
        }
        CHECK(taken == 1);
    }
    printf("a waiting thread and libtribe's own took turns\n");

    /* A thread that never waits but looks with tribe_node_poll_events
     * reads the answers itself; the looks keep libtribe's own thread off. */
    uint64_t looked[20];
    for (int i = 0; i < 20; i++)
        EXPECT(TRIBE_OK, tribe_node_call_async(caller, "quiet", "upper", NULL, TRIBE_KIND_PROCESSOR,
                                               (const uint8_t *)"looks", 5, 5000, &looked[i], &err));
    done = 0;
    end = now_s() + 10;
    while (done < 20 && now_s() < end) done += take_done(caller, looked, 20, "LOOKS", true);
    CHECK(done == 20);
    printf("20 asynchronous calls completed for a thread that only looked\n");

    /* A host that never takes its events: past 65,536 waiting they are
     * dropped, and both tribe_node_events_dropped and the counters say how
     * many. Each join and leave is one event of the caller's. */
    EXPECT(TRIBE_OK, tribe_node_create_tribe(caller, "flood", &err));
    for (int i = 0; i < 34000; i++) {
        EXPECT(TRIBE_OK, tribe_node_join(caller, "flood", NULL, &err));
        EXPECT(TRIBE_OK, tribe_node_leave(caller, "flood", NULL, &err));
    }
    /* Events reach the host's queue from the runtime's a moment later:
     * the last ones may still be on their way when the commands return. */
    uint64_t dropped = 0;
    end = now_s() + 10;
    while ((dropped = tribe_node_events_dropped(caller)) == 0 && now_s() < end) sleep_ms(10);
    CHECK(dropped > 0);
    char *counters = NULL;
    EXPECT(TRIBE_OK, tribe_node_counters_json(caller, &counters, NULL, &err));
    const char *at = strstr(counters, "\"events_dropped\":");
    CHECK(at != NULL);
    CHECK(strtoull(at + strlen("\"events_dropped\":"), NULL, 10) >= dropped);
    tribe_string_free(counters);
    printf("%llu events dropped for a host that took none, and counted\n", (unsigned long long)dropped);

    EXPECT(TRIBE_OK, tribe_node_shutdown(caller, &err));
    EXPECT(TRIBE_OK, tribe_node_shutdown(host, &err));
    pthread_join(host_loop, NULL);
    CHECK(served == 46);
    tribe_node_free(caller);
    tribe_node_free(host);
    printf("unattended: all checks passed\n");
    return 0;
}
