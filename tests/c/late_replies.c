/* Replies a host gives after tribe_node_shutdown reach their callers, even
 * megabytes each and with the host process exiting right after its free:
 * - the host (a second process) takes CALLS calls from blocking callers,
 *   shuts down (its streams say goodbye, and the callers end their sides),
 *   then answers each with REPLY bytes, frees the node and exits;
 * - every caller gets its whole reply (before the fix, a stream closed while
 *   a large reply was still being encoded, and its caller got
 *   TRIBE_DISCONNECTED). */
#include "util.h"

#include <sys/wait.h>
#include <unistd.h>

#define CALLS 6
#define REPLY 4000000u

/* The host process: returns its exit status. */
static int host(const char *key, int to_parent) {
    tribe_node *n = start_node("late-host", key, NULL, NULL);
    OK(tribe_node_create_tribe(n, "t", NULL));
    OK(tribe_node_join(n, "t", NULL, NULL));
    OK(tribe_node_serve(n, "big", "1", TRIBE_KIND_PROCESSOR, NULL));
    const char *addr = tribe_node_addr(n);
    if (write(to_parent, addr, strlen(addr) + 1) != (ssize_t)(strlen(addr) + 1)) return 2;
    close(to_parent);
    tribe_responder *held[CALLS];
    int taken = 0;
    double end = now_s() + 60;
    while (taken < CALLS && now_s() < end) {
        tribe_event *ev = NULL;
        OK(tribe_node_next_event(n, 200, &ev, NULL));
        if (ev == NULL) continue;
        if (tribe_event_kind(ev) == TRIBE_EVENT_CALL) OK(tribe_event_take_responder(ev, &held[taken++], NULL));
        tribe_event_free(ev);
    }
    if (taken < CALLS) return 3;
    OK(tribe_node_shutdown(n, NULL));
    uint8_t *reply = malloc(REPLY);
    CHECK(reply != NULL);
    for (int i = 0; i < CALLS; i++) {
        memset(reply, 'a' + i, REPLY);
        OK(tribe_responder_reply(held[i], reply, REPLY, NULL));
        tribe_responder_free(held[i]);
    }
    free(reply);
    tribe_node_free(n);
    return 0;
}

typedef struct {
    tribe_node *caller;
    pthread_t thread;
    uint32_t rc;
    size_t len;
    bool uniform; /* the reply is one byte repeated */
} call_job;

static void *call_once(void *arg) {
    call_job *job = arg;
    uint8_t *reply = NULL;
    size_t len = 0;
    double end = now_s() + 30;
    for (;;) {
        job->rc = tribe_node_call(job->caller, "t", "big", NULL, TRIBE_KIND_PROCESSOR,
                                  (const uint8_t *)"x", 1, 30000, &reply, &len, NULL);
        /* Until the host and its tribe are known here. */
        if ((job->rc == TRIBE_NO_PROVIDER || job->rc == TRIBE_UNKNOWN_TRIBE) && now_s() < end) {
            sleep_ms(50);
            continue;
        }
        break;
    }
    job->len = len;
    job->uniform = len > 0;
    for (size_t i = 1; i < len; i++)
        if (reply[i] != reply[0]) job->uniform = false;
    tribe_bytes_free(reply, len);
    return NULL;
}

int main(void) {
    char *key = NULL;
    OK(tribe_keygen(&key, NULL, NULL));
    int pipe_fds[2];
    CHECK(pipe(pipe_fds) == 0);
    /* Forked before any libtribe thread exists in this process. */
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(pipe_fds[0]);
        _exit(host(key, pipe_fds[1]));
    }
    close(pipe_fds[1]);
    char addr[128] = {0};
    size_t got = 0;
    while (got < sizeof addr - 1 && memchr(addr, '\0', got) == NULL) {
        ssize_t k = read(pipe_fds[0], addr + got, sizeof addr - 1 - got);
        if (k <= 0) break;
        got += (size_t)k;
    }
    close(pipe_fds[0]);
    CHECK(got > 0);

    tribe_node *caller = start_node("late-caller", key, addr, NULL);
    call_job jobs[CALLS];
    for (int i = 0; i < CALLS; i++) {
        jobs[i] = (call_job){.caller = caller};
        CHECK(pthread_create(&jobs[i].thread, NULL, call_once, &jobs[i]) == 0);
    }
    int lost = 0;
    for (int i = 0; i < CALLS; i++) {
        pthread_join(jobs[i].thread, NULL);
        if (jobs[i].rc != TRIBE_OK || jobs[i].len != REPLY || !jobs[i].uniform) {
            fprintf(stderr, "call %d: %s, %zu bytes\n", i, tribe_result_name(jobs[i].rc), jobs[i].len);
            lost++;
        }
    }
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(lost == 0);
    printf("%d replies of %u bytes given after the host's shutdown all arrived\n", CALLS, REPLY);
    OK(tribe_node_shutdown(caller, NULL));
    tribe_node_free(caller);
    tribe_string_free(key);
    return 0;
}
