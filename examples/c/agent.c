/* An existing C daemon's event loop with libtribe inside it.
 *
 * The daemon polls its own file descriptors and a timer; libtribe adds one
 * more descriptor (tribe_node_event_fd) and never calls into the daemon from
 * its own threads. The node joins tribes by policy from the facts given on
 * the command line, serves a publisher ("c-log": prints what it receives),
 * and on each tick reads /proc/loadavg and publishes the metrics through a
 * tribe to whichever member serves the named publisher (asynchronously, so
 * the loop never blocks on the network).
 *
 *   agent --seed HOST:PORT --key-file FILE [--name NAME] [--fact k=v ...]
 *         [--tribe storage] [--publisher file] [--interval-ms 1000] [--count N]
 *
 * Build: cc -std=c11 -O2 examples/c/agent.c $(pkg-config --cflags --libs tribe) -o c-agent
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tribe.h"

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }
/* Batches sent and not yet answered. */
static long in_flight;

static int fail(const char *what, tribe_error *err) {
    fprintf(stderr, "agent: %s: %s (%s)\n", what, tribe_error_message(err), tribe_error_name(err));
    tribe_error_free(err);
    return 1;
}

static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static char *read_key(const char *path) {
    static char key[128];
    FILE *f = fopen(path, "r");
    if (!f || !fgets(key, sizeof key, f)) {
        fprintf(stderr, "agent: cannot read key file %s\n", path);
        exit(2);
    }
    fclose(f);
    key[strcspn(key, "\r\n")] = '\0';
    return key;
}

/* A step request for the publisher: {"config":{},"metrics":[...]}. */
static int metric_batch(char *buf, size_t cap, const char *host) {
    double l1 = 0, l5 = 0, l15 = 0;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf %lf %lf", &l1, &l5, &l15) != 3) l1 = l5 = l15 = 0;
        fclose(f);
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long long ms = (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    return snprintf(buf, cap,
                    "{\"config\":{},\"metrics\":["
                    "{\"name\":\"load/1min\",\"value\":%.2f,\"tags\":{\"source\":\"%s\"},\"timestamp_ms\":%lld},"
                    "{\"name\":\"load/5min\",\"value\":%.2f,\"tags\":{\"source\":\"%s\"},\"timestamp_ms\":%lld},"
                    "{\"name\":\"load/15min\",\"value\":%.2f,\"tags\":{\"source\":\"%s\"},\"timestamp_ms\":%lld}]}",
                    l1, host, ms, l5, host, ms, l15, host, ms);
}

/* Why no peer answered, when this node is alone: most often a wrong key,
 * or a seed that is not a member's gossip port. */
static void why_alone(const tribe_node *node) {
    char *json = NULL;
    size_t len = 0;
    if (tribe_node_status_json(node, &json, &len, NULL) != TRIBE_OK) return;
    if (strstr(json, "\"members_alive\":1,") != NULL) {
        const char *refused = strstr(json, "\"key_refused_by\":\"");
        if (refused != NULL && refused[strlen("\"key_refused_by\":\"")] != '"')
            printf("  (a peer refused this node's key: use the tribe's current key)\n");
        else
            printf("  (no peer answered: check --seed, a member's gossip port, and --key-file)\n");
    }
    tribe_string_free(json);
}

/* Handles one event on the daemon's own thread. Returns 1 for a publish
 * that succeeded, 0 otherwise. */
static int handle(const tribe_node *node, tribe_event *ev) {
    uint32_t kind = tribe_event_kind(ev);
    const char *name = NULL;
    if (kind == TRIBE_EVENT_CALL) {
        /* Our publisher: print the batch and answer how many bytes we took. */
        tribe_responder *r = NULL;
        if (tribe_event_take_responder(ev, &r, NULL) != TRIBE_OK) return 0;
        size_t len = 0;
        const uint8_t *payload = tribe_responder_payload(r, &len);
        printf("c-log: %zu bytes from %s: %.*s\n", len, tribe_responder_caller(r),
               (int)(len > 200 ? 200 : len), (const char *)payload);
        char reply[32];
        int n = snprintf(reply, sizeof reply, "%zu", len);
        tribe_responder_reply(r, (const uint8_t *)reply, (size_t)n, NULL);
        tribe_responder_free(r);
    } else if (kind == TRIBE_EVENT_CALL_DONE) {
        in_flight--;
        uint64_t id = 0;
        uint8_t *reply = NULL;
        size_t len = 0;
        tribe_error *err = NULL;
        tribe_event_call_id(ev, &id, NULL);
        if (tribe_event_take_reply(ev, &reply, &len, &err) == TRIBE_OK) {
            printf("published batch %" PRIu64 ": publisher answered %.*s\n", id, (int)len, (const char *)reply);
            tribe_bytes_free(reply, len);
            return 1;
        }
        printf("batch %" PRIu64 " not published: %s\n", id, tribe_error_message(err));
        if (tribe_error_code(err) == TRIBE_UNKNOWN_TRIBE) why_alone(node);
        tribe_error_free(err);
    } else if (kind == TRIBE_EVENT_TRIBE_JOINED && tribe_event_tribe(ev, &name, NULL) == TRIBE_OK) {
        printf("joined tribe %s\n", name);
    } else if (kind == TRIBE_EVENT_PLUGIN_LOAD && tribe_event_subject(ev, &name, NULL) == TRIBE_OK) {
        printf("tribe asks to load plugin %s\n", name);
    } else if (kind == TRIBE_EVENT_MEMBER_JOINED && tribe_event_subject(ev, &name, NULL) == TRIBE_OK) {
        printf("member up: %s\n", name);
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *name = "c-agent", *seed = NULL, *key_file = NULL;
    const char *tribe = "storage", *publisher = "file";
    long interval = 1000, count = 0;
    tribe_config *cfg = NULL;
    tribe_error *err = NULL;
    static const char *const options[] = {"--name", "--seed", "--key-file", "--tribe", "--publisher",
                                          "--interval-ms", "--count", "--fact"};
    for (int i = 1; i < argc; i += 2) {
        size_t known = 0;
        while (known < sizeof options / sizeof *options && strcmp(argv[i], options[known]) != 0) known++;
        if (known == sizeof options / sizeof *options) {
            fprintf(stderr, "agent: unknown option %s\n", argv[i]);
            return 2;
        }
        if (i + 1 == argc) {
            fprintf(stderr, "agent: %s wants a value\n", argv[i]);
            return 2;
        }
        if (strcmp(argv[i], "--name") == 0) name = argv[i + 1];
        else if (strcmp(argv[i], "--seed") == 0) seed = argv[i + 1];
        else if (strcmp(argv[i], "--key-file") == 0) key_file = argv[i + 1];
        else if (strcmp(argv[i], "--tribe") == 0) tribe = argv[i + 1];
        else if (strcmp(argv[i], "--publisher") == 0) publisher = argv[i + 1];
        else if (strcmp(argv[i], "--interval-ms") == 0) interval = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--count") == 0) count = atol(argv[i + 1]);
    }
    if (!seed || !key_file || interval <= 0) {
        fprintf(stderr, "usage: agent --seed HOST:PORT --key-file FILE [--name NAME] [--fact k=v ...]\n"
                        "             [--tribe T] [--publisher P] [--interval-ms MS] [--count N]\n");
        return 2;
    }
    if (tribe_config_new(name, &cfg, &err) != TRIBE_OK) return fail("config", err);
    tribe_config_set_profile(cfg, "local", NULL);
    if (tribe_config_add_seed(cfg, seed, &err) != TRIBE_OK) return fail("seed", err);
    if (tribe_config_add_key(cfg, read_key(key_file), &err) != TRIBE_OK) return fail("key", err);
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--fact") != 0) continue;
        char fact[256];
        snprintf(fact, sizeof fact, "%s", argv[i + 1]);
        char *eq = strchr(fact, '=');
        if (!eq) { fprintf(stderr, "agent: --fact wants key=value\n"); return 2; }
        *eq = '\0';
        if (tribe_config_set_fact(cfg, fact, eq + 1, &err) != TRIBE_OK) return fail("fact", err);
    }
    tribe_node *node = NULL;
    uint32_t rc = tribe_node_start(cfg, &node, &err);
    tribe_config_free(cfg);
    if (rc != TRIBE_OK) return fail("start", err);
    printf("node %s up at %s (libtribe %s)\n", tribe_node_name(node), tribe_node_addr(node), tribe_version());
    if (tribe_node_serve(node, "c-log", "1", TRIBE_KIND_PUBLISHER, &err) != TRIBE_OK) return fail("serve", err);

    /* The daemon's own signal handling; libtribe installs none. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    struct pollfd fds[1] = {{.fd = tribe_node_event_fd(node), .events = POLLIN}};
    long next_tick = now_ms() + interval;
    long ticks = 0, published = 0;
    char batch[1024];
    while (!stop && (count == 0 || published < count) && (count == 0 || ticks < count * 10)) {
        long wait = next_tick - now_ms();
        int ready = poll(fds, 1, wait > 0 ? (int)wait : 0);
        if (ready < 0 && errno != EINTR) break;
        if (ready > 0) {
            tribe_event *ev = NULL;
            while (tribe_node_next_event(node, 0, &ev, NULL) == TRIBE_OK && ev) {
                published += handle(node, ev);
                tribe_event_free(ev);
            }
        }
        if (now_ms() >= next_tick) {
            next_tick += interval;
            ticks++;
            int n = metric_batch(batch, sizeof batch, tribe_node_name(node));
            uint64_t id = 0;
            if (tribe_node_call_async(node, tribe, publisher, NULL, TRIBE_KIND_PUBLISHER,
                                      (const uint8_t *)batch, (size_t)n, 2000, &id, &err) != TRIBE_OK) {
                printf("tick %ld: %s\n", ticks, tribe_error_message(err));
                tribe_error_free(err);
                err = NULL;
            } else {
                in_flight++;
            }
        }
    }
    /* The batches still in flight end within their 2 s timeout. */
    long last = now_ms() + 2500;
    while (!stop && in_flight > 0 && now_ms() < last) {
        tribe_event *ev = NULL;
        if (tribe_node_next_event(node, 100, &ev, NULL) == TRIBE_OK && ev) {
            published += handle(node, ev);
            tribe_event_free(ev);
        }
    }
    printf("published %ld batches in %ld ticks; leaving\n", published, ticks);
    tribe_node_shutdown(node, NULL);
    tribe_event *ev = NULL;
    while (tribe_node_next_event(node, 0, &ev, NULL) == TRIBE_OK && ev) tribe_event_free(ev);
    tribe_node_free(node);
    return (count > 0 && published < count) ? 1 : 0;
}
