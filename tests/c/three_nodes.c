/* Three C nodes form an encrypted tribe: a policy places two of them, a
 * plugin entry reaches all three as events, one node serves processors whose
 * handlers are C code and another calls them through the tribe (reply,
 * handler failure, no provider, timeout, asynchronous call and cancel), and
 * a shutdown interrupts a blocked call. Then everything is freed, so
 * LeakSanitizer sees a whole start / work / shutdown / free cycle. */
#include "util.h"

#include <sys/stat.h>
#include <unistd.h>

static tribe_node *nodes[3];
static pump pumps[3];

static bool in_core(const char *json, const char *name) {
    char needle[64];
    /* "members":["a","b"] : a name inside the members array. */
    const char *members = strstr(json, "\"members\":[");
    if (!members) return false;
    const char *end = strchr(members, ']');
    snprintf(needle, sizeof needle, "\"%s\"", name);
    const char *at = strstr(members, needle);
    return at != NULL && at < end;
}

static bool placed(void *arg) {
    (void)arg;
    for (int i = 0; i < 3; i++) {
        char *json = tribe_json(nodes[i], "core");
        if (!json) return false;
        bool ok = in_core(json, "c-a") && in_core(json, "c-b") && !in_core(json, "c-c");
        tribe_string_free(json);
        if (!ok) return false;
    }
    return true;
}

static bool all_loaded(void *arg) {
    (void)arg;
    for (int i = 0; i < 3; i++)
        if (pump_get(&pumps[i], &pumps[i].plugin_loads) < 1) return false;
    return true;
}

static bool all_fetched(void *arg) {
    (void)arg;
    for (int i = 0; i < 3; i++)
        if (pump_get(&pumps[i], &pumps[i].artifact_loads) < 1) return false;
    return true;
}

static bool all_exists(void *arg) {
    (void)arg;
    char *json = tribe_json(nodes[2], "all");
    tribe_string_free(json);
    return json != NULL;
}

static bool three_alive(void *arg) {
    (void)arg;
    for (int i = 0; i < 3; i++) {
        char *json = tribe_json(nodes[i], NULL);
        if (!json) return false;
        int alive = 0;
        for (const char *p = json; (p = strstr(p, "\"state\":\"alive\"")); p++) alive++;
        tribe_string_free(json);
        if (alive != 3) return false;
    }
    return true;
}

/* The caller must see the host's endpoint before calling. */
static bool serves_upper(void *arg) {
    (void)arg;
    char *json = tribe_json(nodes[2], NULL);
    if (!json) return false;
    bool ok = strstr(json, "\"name\":\"upper\"") != NULL && strstr(json, "\"name\":\"fail\"") != NULL &&
              strstr(json, "\"name\":\"slow\"") != NULL && strstr(json, "\"name\":\"decline\"") != NULL &&
              strstr(json, "\"name\":\"huge\"") != NULL;
    tribe_string_free(json);
    return ok;
}

static bool joined_core(void *arg) {
    pump *p = arg;
    return pump_get(p, &p->tribe_joined_core) >= 1;
}

static bool done_count(void *arg) {
    int want = *(int *)arg;
    return pump_get(&pumps[2], &pumps[2].done_events) >= want;
}

int main(void) {
    char *key = NULL;
    size_t key_len = 0;
    OK(tribe_keygen(&key, &key_len, NULL));
    CHECK(key_len == 44 && strlen(key) == 44);
    /* A key file works like the key itself. */
    char key_path[] = "/tmp/tribe-c-key-XXXXXX";
    int fd = mkstemp(key_path);
    CHECK(fd >= 0 && write(fd, key, key_len) == (ssize_t)key_len && write(fd, "\n", 1) == 1);
    close(fd);
    tribe_config *kcfg = NULL;
    OK(tribe_config_new("k", &kcfg, NULL));
    EXPECT(TRIBE_OK, tribe_config_add_key_file(kcfg, key_path, &err));
    EXPECT(TRIBE_IO, tribe_config_add_key_file(kcfg, "/nonexistent/key", &err));
    /* A FIFO (no writer) or a device is refused at once, not waited on. */
    char fifo_path[] = "/tmp/tribe-c-fifo-XXXXXX";
    CHECK(mkdtemp(fifo_path) != NULL);
    char fifo[64];
    snprintf(fifo, sizeof fifo, "%s/key", fifo_path);
    CHECK(mkfifo(fifo, 0600) == 0);
    EXPECT(TRIBE_CONFIG, tribe_config_add_key_file(kcfg, fifo, &err));
    EXPECT(TRIBE_CONFIG, tribe_config_add_key_file(kcfg, "/dev/zero", &err));
    unlink(fifo);
    rmdir(fifo_path);
    tribe_config_free(kcfg);
    unlink(key_path);

    nodes[0] = start_node("c-a", key, NULL, "r1");
    const char *seed = tribe_node_addr(nodes[0]);
    CHECK(seed != NULL && strncmp(seed, "127.0.0.1:", 10) == 0);
    nodes[1] = start_node("c-b", key, seed, "r1");
    nodes[2] = start_node("c-c", key, seed, "r2");
    CHECK(strcmp(tribe_node_name(nodes[1]), "c-b") == 0);
    for (int i = 0; i < 3; i++) pump_start(&pumps[i], nodes[i]);

    CHECK(wait_for(three_alive, NULL, 15));
    /* The fields come in the admin API's order, name first (not sorted). */
    {
        char *members = tribe_json(nodes[0], NULL), *status = NULL;
        OK(tribe_node_status_json(nodes[0], &status, NULL, NULL));
        CHECK(strncmp(members, "[{\"name\":", 9) == 0);
        CHECK(strncmp(status, "{\"name\":", 8) == 0);
        tribe_string_free(members);
        tribe_string_free(status);
    }
    printf("three nodes alive, sealed with one key\n");

    /* A policy creates tribe "core" and places the two r1 nodes. */
    EXPECT(TRIBE_OK, tribe_node_add_policy(nodes[0], "core-r1", "core", "facts.rack == \"r1\"", &err));
    CHECK(wait_for(placed, NULL, 15));
    /* c-a's pump counts its TRIBE_JOINED on its own thread, maybe after
     * the snapshots show the placement: wait for it, then exactly one. */
    CHECK(wait_for(joined_core, &pumps[0], 5));
    CHECK(pump_get(&pumps[0], &pumps[0].tribe_joined_core) == 1);
    CHECK(pump_get(&pumps[2], &pumps[2].tribe_joined_core) == 0);
    printf("policy placed c-a and c-b in core, not c-c\n");

    /* A plugin entry of a tribe every node is in reaches all three. */
    EXPECT(TRIBE_OK, tribe_node_add_policy(nodes[1], "everyone", "all", "facts.rack != \"\"", &err));
    CHECK(wait_for(all_exists, NULL, 15));
    EXPECT(TRIBE_OK, tribe_node_load_plugin(nodes[2], "all", "disk", "1", TRIBE_KIND_COLLECTOR, &err));
    CHECK(wait_for(all_loaded, NULL, 15));
    printf("plugin entry reached all three nodes as events\n");

    /* An entry carrying an artifact: each member fetches and verifies the
     * bytes before its event, then reads them by SHA-256. */
    static const char blob[] = "#!/bin/sh\necho plugin\n";
    char *sha = NULL;
    EXPECT(TRIBE_OK, tribe_node_load_plugin_artifact(nodes[0], "all", "script", "1", TRIBE_KIND_COLLECTOR,
                                                     (const uint8_t *)blob, sizeof blob - 1, &sha, &err));
    CHECK(sha != NULL && strlen(sha) == 64);
    CHECK(wait_for(all_fetched, NULL, 15));
    for (int i = 0; i < 3; i++) {
        uint8_t *got = NULL;
        size_t got_len = 0;
        EXPECT(TRIBE_OK, tribe_node_artifact(nodes[i], sha, &got, &got_len, &err));
        CHECK(got_len == sizeof blob - 1 && memcmp(got, blob, got_len) == 0);
        tribe_bytes_free(got, got_len);
    }
    uint8_t *none = NULL;
    size_t none_len = 0;
    char unknown[65];
    memset(unknown, '0', 64);
    unknown[64] = '\0';
    EXPECT(TRIBE_UNKNOWN_ARTIFACT, tribe_node_artifact(nodes[1], unknown, &none, &none_len, &err));
    EXPECT(TRIBE_INVALID_ARGUMENT, tribe_node_artifact(nodes[1], "abc", &none, &none_len, &err));
    /* The same entry again is refused; the sha256 out-parameter is optional. */
    EXPECT(TRIBE_PLUGIN_EXISTS, tribe_node_load_plugin_artifact(nodes[1], "all", "script", "1", TRIBE_KIND_COLLECTOR,
                                                                (const uint8_t *)blob, sizeof blob - 1, NULL, &err));
    tribe_string_free(sha);
    printf("an artifact reached all three nodes, verified, by sha256\n");

    /* c-b serves processors with C handlers (the pump answers them). */
    EXPECT(TRIBE_OK, tribe_node_serve(nodes[1], "upper", "1", TRIBE_KIND_PROCESSOR, &err));
    EXPECT(TRIBE_OK, tribe_node_serve(nodes[1], "fail", "1", TRIBE_KIND_PROCESSOR, &err));
    EXPECT(TRIBE_OK, tribe_node_serve(nodes[1], "slow", "1", TRIBE_KIND_PROCESSOR, &err));
    EXPECT(TRIBE_OK, tribe_node_serve(nodes[1], "decline", "1", TRIBE_KIND_PROCESSOR, &err));
    EXPECT(TRIBE_OK, tribe_node_serve(nodes[1], "huge", "1", TRIBE_KIND_PROCESSOR, &err));
    CHECK(wait_for(serves_upper, NULL, 15));

    uint8_t *reply = NULL;
    size_t reply_len = 0;
    const char *payload = "hello tribe";
    EXPECT(TRIBE_OK, tribe_node_call(nodes[2], "core", "upper", "1", TRIBE_KIND_PROCESSOR,
                                     (const uint8_t *)payload, strlen(payload), 5000, &reply,
                                     &reply_len, &err));
    CHECK(reply_len == strlen(payload) && memcmp(reply, "HELLO TRIBE", reply_len) == 0);
    tribe_bytes_free(reply, reply_len);
    printf("c-c called c-b's C handler through core: HELLO TRIBE\n");
    /* A caller that wants only the outcome passes no reply buffer. */
    EXPECT(TRIBE_OK, tribe_node_call(nodes[2], "core", "upper", "1", TRIBE_KIND_PROCESSOR,
                                     (const uint8_t *)payload, strlen(payload), 5000, NULL, NULL, &err));

    /* A handler failure carries the handler's code and message. */
    tribe_error *err = NULL;
    uint32_t rc = tribe_node_call(nodes[2], "core", "fail", NULL, TRIBE_KIND_PROCESSOR,
                                  (const uint8_t *)"x", 1, 5000, &reply, &reply_len, &err);
    CHECK(rc == TRIBE_REMOTE && tribe_error_code(err) == TRIBE_REMOTE);
    CHECK(strcmp(tribe_error_remote_code(err), "bad_input") == 0);
    CHECK(strcmp(tribe_error_remote_message(err), "cannot handle this payload") == 0);
    CHECK(strcmp(tribe_error_name(err), "remote") == 0);
    CHECK(reply == NULL && reply_len == 0);
    tribe_error_free(err);
    /* Its bytes that are not UTF-8 arrive replaced (U+FFFD), not lost. */
    err = NULL;
    rc = tribe_node_call(nodes[2], "core", "fail", NULL, TRIBE_KIND_PROCESSOR,
                         (const uint8_t *)"latin1", 6, 5000, &reply, &reply_len, &err);
    CHECK(rc == TRIBE_REMOTE);
    CHECK(strcmp(tribe_error_remote_code(err), "bad_\xef\xbf\xbd") == 0);
    CHECK(strcmp(tribe_error_remote_message(err), "caf\xef\xbf\xbd closed") == 0);
    tribe_error_free(err);

    /* A reply over the host's max_payload: the caller gets "too_large",
     * and the handler's tribe_responder_reply returned TRIBE_TOO_LARGE. */
    err = NULL;
    rc = tribe_node_call(nodes[2], "core", "huge", NULL, TRIBE_KIND_PROCESSOR,
                         (const uint8_t *)"x", 1, 5000, &reply, &reply_len, &err);
    CHECK(rc == TRIBE_REMOTE && strcmp(tribe_error_remote_code(err), "too_large") == 0);
    tribe_error_free(err);
    /* The pump counts it after the answer went out. */
    for (int i = 0; i < 100 && pump_get(&pumps[1], &pumps[1].too_large_told) < 1; i++) sleep_ms(50);
    CHECK(pump_get(&pumps[1], &pumps[1].too_large_told) == 1);

    /* Nobody serves it; and a handler that does not answer in time. */
    EXPECT(TRIBE_NO_PROVIDER, tribe_node_call(nodes[2], "core", "nobody", NULL, TRIBE_KIND_PROCESSOR,
                                              NULL, 0, 2000, &reply, &reply_len, &err));
    double t0 = now_s();
    EXPECT(TRIBE_TIMEOUT, tribe_node_call(nodes[2], "core", "slow", NULL, TRIBE_KIND_PROCESSOR,
                                          (const uint8_t *)"x", 1, 300, &reply, &reply_len, &err));
    CHECK(now_s() - t0 < 3.0);
    /* A declined call ends at the caller's deadline, as a timeout. */
    t0 = now_s();
    EXPECT(TRIBE_TIMEOUT, tribe_node_call(nodes[2], "core", "decline", NULL, TRIBE_KIND_PROCESSOR,
                                          (const uint8_t *)"x", 1, 300, &reply, &reply_len, &err));
    CHECK(now_s() - t0 >= 0.25 && now_s() - t0 < 3.0);
    printf("remote failure, no provider, timeout and a declined call reported as such\n");

    /* Asynchronous calls: a reply, then a cancel, each one completion. */
    uint64_t id = 0;
    EXPECT(TRIBE_OK, tribe_node_call_async(nodes[2], "core", "upper", NULL, TRIBE_KIND_PROCESSOR,
                                           (const uint8_t *)"async", 5, 5000, &id, &err));
    int want = 1;
    CHECK(wait_for(done_count, &want, 10));
    pthread_mutex_lock(&pumps[2].lock);
    CHECK(pumps[2].last_done_id == id && pumps[2].last_done_rc == TRIBE_OK);
    CHECK(strcmp(pumps[2].last_done_reply, "ASYNC") == 0);
    pthread_mutex_unlock(&pumps[2].lock);
    EXPECT(TRIBE_OK, tribe_node_call_async(nodes[2], "core", "slow", NULL, TRIBE_KIND_PROCESSOR,
                                           (const uint8_t *)"x", 1, 10000, &id, &err));
    sleep_ms(200);
    EXPECT(TRIBE_OK, tribe_node_call_cancel(nodes[2], id, &err));
    EXPECT(TRIBE_OK, tribe_node_call_cancel(nodes[2], id, &err)); /* finished: ignored */
    /* The host learns of the cancel at once: the call it keeps unanswered
     * is abandoned long before its 10 s budget. */
    double c0 = now_s();
    bool abandoned = false;
    while (!abandoned && now_s() - c0 < 5.0) {
        pthread_mutex_lock(&pumps[1].lock);
        abandoned = pumps[1].nkept > 0 &&
                    tribe_responder_is_abandoned(pumps[1].kept[pumps[1].nkept - 1]);
        pthread_mutex_unlock(&pumps[1].lock);
        if (!abandoned) sleep_ms(20);
    }
    CHECK(abandoned);
    want = 2;
    CHECK(wait_for(done_count, &want, 10));
    sleep_ms(200);
    pthread_mutex_lock(&pumps[2].lock);
    CHECK(pumps[2].done_events == 2);
    CHECK(pumps[2].last_done_id == id && pumps[2].last_done_rc == TRIBE_CANCELLED);
    pthread_mutex_unlock(&pumps[2].lock);
    printf("asynchronous call replied; a cancelled one completed once as cancelled\n");

    /* A host that keeps the deadline itself ends the call as timed out. */
    EXPECT(TRIBE_OK, tribe_node_call_async(nodes[2], "core", "slow", NULL, TRIBE_KIND_PROCESSOR,
                                           (const uint8_t *)"x", 1, 10000, &id, &err));
    sleep_ms(100);
    EXPECT(TRIBE_OK, tribe_node_call_expire(nodes[2], id, &err));
    EXPECT(TRIBE_OK, tribe_node_call_expire(nodes[2], id, &err)); /* finished: ignored */
    want = 3;
    CHECK(wait_for(done_count, &want, 10));
    sleep_ms(200);
    pthread_mutex_lock(&pumps[2].lock);
    CHECK(pumps[2].done_events == 3);
    CHECK(pumps[2].last_done_id == id && pumps[2].last_done_rc == TRIBE_TIMEOUT);
    pthread_mutex_unlock(&pumps[2].lock);
    printf("an expired asynchronous call completed once as a timeout\n");

    /* A shutdown from another thread interrupts a blocked call. */
    timed_call b = {.caller = nodes[2], .tribe = "core", .plugin = "slow"};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, timed_call_run, &b) == 0);
    sleep_ms(500);
    EXPECT(TRIBE_OK, tribe_node_shutdown(nodes[2], &err));
    pthread_join(t, NULL);
    CHECK(b.rc == TRIBE_SHUTTING_DOWN);
    CHECK(b.took < 5.0);
    printf("shutdown interrupted a blocked call after %.2f s\n", b.took);

    /* The others record the node as left. */
    for (int i = 0; i < 2; i++) {
        double end = now_s() + 10;
        bool left = false;
        while (!left && now_s() < end) {
            char *json = tribe_json(nodes[i], NULL);
            left = json && strstr(json, "\"name\":\"c-c\"") &&
                   strstr(strstr(json, "\"name\":\"c-c\""), "\"state\":\"left\"");
            tribe_string_free(json);
            if (!left) sleep_ms(50);
        }
        CHECK(left);
    }

    for (int i = 0; i < 3; i++) EXPECT(TRIBE_OK, tribe_node_shutdown(nodes[i], &err));
    for (int i = 0; i < 3; i++) {
        pump_join(&pumps[i]);
        CHECK(pumps[i].stopped);
        tribe_node_free(nodes[i]);
    }
    tribe_string_free(key);
    printf("three_nodes: all checks passed\n");
    return 0;
}
