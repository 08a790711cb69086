/* A caller that makes one call at a time, each once it has the last one's
 * answer, is never refused as overloaded by a host at max_serving 1 that
 * answers each call on its event thread at once: a call's places come back
 * before its answer is written. Both a call to the node itself and one
 * from another node. */
#include "util.h"

#define CALLS 300

static bool endpoint_seen(void *arg) {
    const tribe_node *caller = arg;
    char *json = tribe_json(caller, NULL);
    bool seen = json && strstr(json, "\"name\":\"upper\"") != NULL;
    tribe_string_free(json);
    return seen;
}

static tribe_node *start_host(void) {
    tribe_config *cfg = NULL;
    tribe_node *node = NULL;
    OK(tribe_config_new("host", &cfg, NULL));
    OK(tribe_config_set_profile(cfg, "local", NULL));
    OK(tribe_config_set_collect_facts(cfg, false, NULL));
    OK(tribe_config_set_limit(cfg, "max_serving", 1, NULL));
    OK(tribe_node_start(cfg, &node, NULL));
    tribe_config_free(cfg);
    OK(tribe_node_create_tribe(node, "t", NULL));
    OK(tribe_node_join(node, "t", NULL, NULL));
    OK(tribe_node_serve(node, "upper", "1", TRIBE_KIND_PROCESSOR, NULL));
    return node;
}

static void one_at_a_time(tribe_node *caller, const char *who) {
    int refused = 0;
    for (int i = 0; i < CALLS; i++) {
        uint8_t *reply = NULL;
        size_t len = 0;
        tribe_error *err = NULL;
        uint32_t rc = tribe_node_call(caller, "t", "upper", NULL, TRIBE_KIND_PROCESSOR,
                                      (const uint8_t *)"ab", 2, 5000, &reply, &len, &err);
        if (rc == TRIBE_OVERLOADED) {
            refused++;
        } else if (rc != TRIBE_OK) {
            die(__FILE__, __LINE__, "%s call %d: %s", who, i, tribe_error_message(err));
        } else {
            CHECK(len == 2 && memcmp(reply, "AB", 2) == 0);
        }
        tribe_error_free(err);
        tribe_bytes_free(reply, len);
    }
    if (refused != 0) die(__FILE__, __LINE__, "%s: %d of %d calls refused as overloaded", who, refused, CALLS);
}

int main(void) {
    tribe_node *host = start_host();
    tribe_node *caller = start_node("caller", NULL, tribe_node_addr(host), NULL);
    pump p;
    pump_start(&p, host);
    CHECK(wait_for(endpoint_seen, caller, 30));
    one_at_a_time(host, "the host itself");
    one_at_a_time(caller, "another node");
    OK(tribe_node_shutdown(caller, NULL));
    OK(tribe_node_shutdown(host, NULL));
    pump_join(&p);
    tribe_node_free(caller);
    tribe_node_free(host);
    puts("one_at_a_time: ok");
    return 0;
}
