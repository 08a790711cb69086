/* Seeds given by name are looked up by the node, not by
 * tribe_config_add_seed, and never hold it up: this program stands in for
 * the system resolver (it defines getaddrinfo, which libtribe's lookups
 * then reach) with a name whose lookup hangs, as when DNS is down.
 *   - a node with that name and "localhost:PORT" as seeds starts at once
 *     and joins through localhost while the other lookup still hangs;
 *   - a node whose only seed hangs stops and is freed while the lookup
 *     still hangs (the lookup runs on a thread nobody waits for);
 *   - a node started without seeds joins later with
 *     tribe_node_join_cluster: through "localhost:PORT" (one joined),
 *     and through the hanging name alone (TRIBE_IO after the 5 s lookup
 *     bound, the name and why in the message), and a shutdown ends such a
 *     join at once (TRIBE_SHUTTING_DOWN);
 *   - a join through a name that gives 300 addresses tries 256 of them. */
#define _GNU_SOURCE
#include "util.h"

#include <dlfcn.h>
#include <netdb.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <unistd.h>

#define HANG_SECONDS 60
static atomic_int hanging;      /* lookups of the hanging name under way */
static atomic_bool hang_ended;  /* one of them has returned */
static atomic_llong first_lookup_ns; /* when a seed's lookup first began (CLOCK_MONOTONIC) */

#define MANY 300
/* The answer of a name that gives MANY addresses, 127.0.1.1 up, each as
 * glibc lays an entry out (the address in the entry's own block), so that
 * freeaddrinfo frees it. */
static int many_addresses(const char *service, struct addrinfo **res) {
    struct addrinfo *head = NULL;
    for (int i = MANY; i > 0; i--) {
        struct addrinfo *ai = calloc(1, sizeof *ai + sizeof(struct sockaddr_in));
        if (!ai) return EAI_MEMORY;
        struct sockaddr_in *sin = (struct sockaddr_in *)(ai + 1);
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)atoi(service ? service : "0"));
        sin->sin_addr.s_addr = htonl(0x7f000100u + (uint32_t)i);
        ai->ai_family = AF_INET;
        ai->ai_socktype = SOCK_STREAM;
        ai->ai_protocol = IPPROTO_TCP;
        ai->ai_addrlen = sizeof *sin;
        ai->ai_addr = (struct sockaddr *)sin;
        ai->ai_next = head;
        head = ai;
    }
    *res = head;
    return 0;
}

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res) {
    static int (*real)(const char *, const char *, const struct addrinfo *,
                       struct addrinfo **);
    if (node && (strcmp(node, "dns-down.test") == 0 || strcmp(node, "localhost") == 0)) {
        long long unset = 0;
        atomic_compare_exchange_strong(&first_lookup_ns, &unset, (long long)(now_s() * 1e9));
    }
    if (node && strcmp(node, "dns-down.test") == 0) {
        atomic_fetch_add(&hanging, 1);
        sleep(HANG_SECONDS);
        atomic_store(&hang_ended, true);
        return EAI_AGAIN;
    }
    if (node && strcmp(node, "many.test") == 0) return many_addresses(service, res);
    if (!real) *(void **)&real = dlsym(RTLD_NEXT, "getaddrinfo");
    return real(node, service, hints, res);
}

typedef struct {
    tribe_node *node;
    uint32_t rc;
    double ended;
} join_arg;

/* Joins through the name whose lookup hangs; notes how and when it ended. */
static void *join_hanging(void *arg) {
    join_arg *ja = arg;
    const char *places[] = {"dns-down.test:7946"};
    ja->rc = tribe_node_join_cluster(ja->node, places, 1, NULL, NULL);
    ja->ended = now_s();
    return NULL;
}

static int alive(tribe_node *n) {
    char *json = tribe_json(n, NULL);
    int count = 0;
    for (char *p = json; p && (p = strstr(p, "\"alive\"")); p++) count++;
    tribe_string_free(json);
    return count;
}

static bool both_alive(void *arg) { return alive(arg) == 2; }

/* A lookup of the hanging name began after `*arg` others had. */
static bool lookup_started(void *arg) {
    return atomic_load(&hanging) > *(int *)arg;
}

int main(void) {
    tribe_node *first = start_node("named-0", NULL, NULL, NULL);
    char seed[64];
    snprintf(seed, sizeof seed, "localhost:%s", strrchr(tribe_node_addr(first), ':') + 1);

    tribe_config *cfg = NULL;
    OK(tribe_config_new("named-1", &cfg, NULL));
    OK(tribe_config_set_profile(cfg, "local", NULL));
    OK(tribe_config_set_collect_facts(cfg, false, NULL));
    OK(tribe_config_add_seed(cfg, "dns-down.test:7946", NULL));
    OK(tribe_config_add_seed(cfg, seed, NULL));
    CHECK(atomic_load(&hanging) == 0); /* nothing looked up yet */
    tribe_node *second = NULL;
    OK(tribe_node_start(cfg, &second, NULL));
    tribe_config_free(cfg);
    CHECK(wait_for(both_alive, second, 30));
    double joined = now_s();
    /* The first round of lookups starts both names' together and waits
     * up to 5 s for the hanging one. Joined before that round could have
     * ended, counted from when its first lookup began (not from the
     * node's start, which a loaded box may slow): the answer for
     * localhost was not held up by the hanging lookup. */
    int none = 0;
    CHECK(wait_for(lookup_started, &none, 30));
    CHECK(joined - (double)atomic_load(&first_lookup_ns) / 1e9 < 5.0);
    CHECK(!atomic_load(&hang_ended));
    printf("joined through %s while the other seed's lookup hangs\n", seed);
    OK(tribe_node_shutdown(second, NULL));
    tribe_node_free(second);

    /* Its own lookup of the name, not the one named-1 left hanging. */
    int before = atomic_load(&hanging);
    tribe_node *alone = start_node("named-2", NULL, "dns-down.test:7946", NULL);
    CHECK(wait_for(lookup_started, &before, 30));
    OK(tribe_node_shutdown(alone, NULL));
    tribe_node_free(alone);
    CHECK(!atomic_load(&hang_ended));
    printf("a node whose seed's lookup hangs stops and is freed at once\n");

    tribe_node *late = start_node("named-3", NULL, NULL, NULL);
    CHECK(alive(late) == 1);
    const char *places[] = {seed};
    size_t count = 99;
    EXPECT(TRIBE_OK, tribe_node_join_cluster(late, places, 1, &count, &err));
    CHECK(count == 1);
    CHECK(wait_for(both_alive, late, 30));
    printf("a node started alone joined through %s later\n", seed);
    const char *hanging_only[] = {"dns-down.test:7946"};
    tribe_error *e = NULL;
    double asked = now_s();
    CHECK(tribe_node_join_cluster(late, hanging_only, 1, &count, &e) == TRIBE_IO);
    CHECK(now_s() - asked < 15.0);
    CHECK(count == 0);
    CHECK(strstr(tribe_error_message(e), "dns-down.test:7946: the lookup takes over 5 s"));
    tribe_error_free(e);
    printf("a join through a name whose lookup hangs ends TRIBE_IO after the lookup bound\n");
    /* A name that gives more addresses than a join takes places: the
     * first 256 are tried (nothing listens there: refused), the rest not. */
    const char *many[] = {"many.test:1"};
    CHECK(tribe_node_join_cluster(late, many, 1, &count, &e) == TRIBE_IO);
    CHECK(count == 0);
    CHECK(strstr(tribe_error_message(e), "44 more addresses that the names gave were not tried"));
    CHECK(strstr(tribe_error_message(e), "127.0.2.0:1: "));
    CHECK(!strstr(tribe_error_message(e), "127.0.2.1:1: "));
    tribe_error_free(e);
    printf("a join tries at most 256 of the addresses a name gives\n");
    /* A shutdown ends a join that waits on that lookup at once. */
    pthread_t joiner;
    join_arg ja = {late, TRIBE_OK, 0};
    CHECK(pthread_create(&joiner, NULL, join_hanging, &ja) == 0);
    sleep_ms(300);
    double stopping = now_s();
    OK(tribe_node_shutdown(late, NULL));
    CHECK(pthread_join(joiner, NULL) == 0);
    CHECK(ja.rc == TRIBE_SHUTTING_DOWN);
    CHECK(ja.ended - stopping < 2.0);
    printf("a shutdown ends a join waiting on a lookup at once\n");
    EXPECT(TRIBE_SHUTTING_DOWN, tribe_node_join_cluster(late, places, 1, &count, &err));
    tribe_node_free(late);

    OK(tribe_node_shutdown(first, NULL));
    tribe_node_free(first);
    printf("seed_names: all checks passed\n");
    return 0;
}
