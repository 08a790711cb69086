/* tribe_config_set_reap_after: a node forgets a failed member after the
 * time it was given (the local profile's own is 5 min), whether the
 * profile is set before or after it; out-of-range values are refused. */
#include "util.h"

static bool lists(void *arg, const char *name) {
    char *json = tribe_json(arg, NULL);
    CHECK(json != NULL);
    bool found = strstr(json, name) != NULL;
    tribe_string_free(json);
    return found;
}

static bool b_alive(void *arg) {
    char *json = tribe_json(arg, NULL);
    CHECK(json != NULL);
    /* Two members, both alive. */
    int alive = 0;
    for (const char *p = json; (p = strstr(p, "\"state\":\"alive\"")) != NULL; p++) alive++;
    tribe_string_free(json);
    return alive == 2;
}

static bool b_forgotten(void *arg) { return !lists(arg, "\"reap-b\""); }

int main(void) {
    tribe_config *cfg = NULL;
    OK(tribe_config_new("reap-a", &cfg, NULL));
    EXPECT(TRIBE_INVALID_ARGUMENT, tribe_config_set_reap_after(cfg, 0, &err));
    EXPECT(TRIBE_INVALID_ARGUMENT,
           tribe_config_set_reap_after(cfg, 366ULL * 24 * 3600 * 1000, &err));
    EXPECT(TRIBE_NULL_ARGUMENT, tribe_config_set_reap_after(NULL, 1000, &err));
    /* Set before the profile: it still counts. */
    OK(tribe_config_set_reap_after(cfg, 1500, NULL));
    OK(tribe_config_set_profile(cfg, "local", NULL));
    OK(tribe_config_set_collect_facts(cfg, false, NULL));
    EXPECT(TRIBE_OK, tribe_config_check(cfg, &err));
    tribe_node *a = NULL;
    OK(tribe_node_start(cfg, &a, NULL));
    tribe_config_free(cfg);

    tribe_node *b = start_node("reap-b", NULL, tribe_node_addr(a), NULL);
    CHECK(wait_for(b_alive, a, 30));
    double t0 = now_s();
    OK(tribe_node_abort(b, NULL));
    /* Found failed within seconds, then forgotten 1.5 s later (the
     * profile's own 5 min would keep it listed past this wait). */
    CHECK(wait_for(b_forgotten, a, 40));
    printf("a failed member was forgotten %.1f s after its abort\n", now_s() - t0);

    OK(tribe_node_shutdown(a, NULL));
    tribe_node_free(a);
    tribe_node_free(b);
    printf("ok\n");
    return 0;
}
