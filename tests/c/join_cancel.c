/* tribe_node_join_cluster_cancellable gives a blocking join a limit and a
 * cancel token, against a peer that accepts connections and never answers
 * (a plain join waits 10 s for it):
 *   - a limit of 200 ms ends it with TRIBE_TIMEOUT, well before 10 s;
 *   - with a live peer beside the silent one, the limit ends it with
 *     TRIBE_OK and the live peer counted;
 *   - a token triggered from another thread ends it with TRIBE_CANCELLED,
 *     and so does a token triggered before the call, at once;
 *   - bad places are told as such, also with a token triggered already;
 *   - thirty joins given up that way leave nothing behind (their
 *     connections are dropped at once, not held by the silent peer): a
 *     join through a live node with a fresh token and no limit then
 *     completes;
 *   - NULL handles and tokens are harmless where the header says so. */
#include "util.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct {
    tribe_cancel *cancel;
    long after_ms;
} trigger_arg;

static void *trigger_later(void *arg) {
    trigger_arg *t = arg;
    sleep_ms(t->after_ms);
    tribe_cancel_trigger(t->cancel);
    return NULL;
}

static int open_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    CHECK(d != NULL);
    int n = 0;
    while (readdir(d)) n++;
    closedir(d);
    return n;
}

/* At most two descriptors more than `*arg` are open (a lookup or a
 * gossip socket of the moment). */
static bool fds_back(void *arg) { return open_fds() <= *(int *)arg + 2; }

/* A listening socket on 127.0.0.1 that is never accepted from: the kernel
 * completes the connections, and nothing is ever said on them. */
static int silent_peer(char *addr, size_t len) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(fd >= 0);
    struct sockaddr_in sin = {0};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(fd, (struct sockaddr *)&sin, sizeof sin) == 0);
    CHECK(listen(fd, 128) == 0);
    socklen_t sl = sizeof sin;
    CHECK(getsockname(fd, (struct sockaddr *)&sin, &sl) == 0);
    snprintf(addr, len, "127.0.0.1:%u", (unsigned)ntohs(sin.sin_port));
    return fd;
}

int main(void) {
    char silent[64];
    int fd = silent_peer(silent, sizeof silent);
    const char *to_silent[] = {silent};
    tribe_node *a = start_node("cancel-a", NULL, NULL, NULL);
    tribe_node *b = start_node("cancel-b", NULL, NULL, NULL);

    size_t joined = 99;
    double t0 = now_s();
    EXPECT(TRIBE_TIMEOUT,
           tribe_node_join_cluster_cancellable(b, to_silent, 1, 200, NULL, &joined, &err));
    double took = now_s() - t0;
    CHECK(joined == 0);
    CHECK(took >= 0.19 && took < 3.0);
    printf("a join to a silent peer ended at its 200 ms limit after %.0f ms\n", took * 1000);

    /* What was reached by the limit counts: a live node beside the
     * silent peer. */
    const char *to_a[] = {tribe_node_addr(a)};
    const char *to_both[] = {silent, tribe_node_addr(a)};
    joined = 99;
    t0 = now_s();
    EXPECT(TRIBE_OK,
           tribe_node_join_cluster_cancellable(b, to_both, 2, 1000, NULL, &joined, &err));
    took = now_s() - t0;
    CHECK(joined == 1);
    CHECK(took >= 0.99 && took < 5.0);
    printf("a join through a live and a silent peer counted the live one at its limit (%.0f ms)\n",
           took * 1000);

    tribe_cancel *cancel = NULL;
    OK(tribe_cancel_new(&cancel, NULL));
    CHECK(!tribe_cancel_is_triggered(cancel));
    trigger_arg ta = {cancel, 100};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, trigger_later, &ta) == 0);
    t0 = now_s();
    EXPECT(TRIBE_CANCELLED,
           tribe_node_join_cluster_cancellable(b, to_silent, 1, 0, cancel, &joined, &err));
    took = now_s() - t0;
    CHECK(pthread_join(t, NULL) == 0);
    CHECK(took >= 0.09 && took < 3.0);
    CHECK(tribe_cancel_is_triggered(cancel));
    printf("a join cancelled from another thread ended after %.0f ms\n", took * 1000);

    /* A triggered token stays triggered: a join given it ends at once,
     * also through a live node. */
    t0 = now_s();
    EXPECT(TRIBE_CANCELLED,
           tribe_node_join_cluster_cancellable(b, to_a, 1, 0, cancel, &joined, &err));
    CHECK(now_s() - t0 < 1.0);
    tribe_cancel_trigger(cancel); /* again: no effect */
    tribe_cancel_free(cancel);

    /* Bad places are told as such, also with a token triggered already. */
    tribe_cancel *fired = NULL;
    OK(tribe_cancel_new(&fired, NULL));
    tribe_cancel_trigger(fired);
    const char *bad[] = {"no-port"};
    EXPECT(TRIBE_INVALID_ARGUMENT,
           tribe_node_join_cluster_cancellable(b, bad, 1, 0, fired, &joined, &err));
    tribe_cancel_free(fired);

    /* Given-up joins drop their connections at once: the silent peer
     * would hold each open for the stream's lifetime (30 s). */
    int fds_before = open_fds();
    for (int i = 0; i < 30; i++) {
        tribe_cancel *c = NULL;
        OK(tribe_cancel_new(&c, NULL));
        trigger_arg quick = {c, 10};
        CHECK(pthread_create(&t, NULL, trigger_later, &quick) == 0);
        EXPECT(TRIBE_CANCELLED,
               tribe_node_join_cluster_cancellable(b, to_silent, 1, 0, c, &joined, &err));
        CHECK(pthread_join(t, NULL) == 0);
        tribe_cancel_free(c);
    }
    CHECK(wait_for(fds_back, &fds_before, 5));
    printf("30 cancelled joins left no descriptor behind (%d open)\n", open_fds());
    OK(tribe_cancel_new(&cancel, NULL));
    joined = 0;
    EXPECT(TRIBE_OK, tribe_node_join_cluster_cancellable(b, to_a, 1, 0, cancel, &joined, &err));
    CHECK(joined == 1);
    tribe_cancel_free(cancel);
    printf("after 30 cancelled joins, a join through a live node completed\n");

    /* NULL: ignored by trigger and free, false for is_triggered, refused
     * by new's out-parameter. */
    tribe_cancel_trigger(NULL);
    tribe_cancel_free(NULL);
    CHECK(!tribe_cancel_is_triggered(NULL));
    EXPECT(TRIBE_NULL_ARGUMENT, tribe_cancel_new(NULL, &err));
    EXPECT(TRIBE_INVALID_ARGUMENT,
           tribe_node_join_cluster_cancellable(b, to_a, 0, 100, NULL, &joined, &err));

    OK(tribe_node_shutdown(b, NULL));
    EXPECT(TRIBE_SHUTTING_DOWN,
           tribe_node_join_cluster_cancellable(b, to_a, 1, 100, NULL, &joined, &err));
    tribe_node_free(b);
    OK(tribe_node_shutdown(a, NULL));
    tribe_node_free(a);
    close(fd);
    printf("ok\n");
    return 0;
}
