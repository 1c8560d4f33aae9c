/*
 * plumb: the CNI executable. Answers VERSION itself; forwards every other call (its CNI_*
 * environment and stdin, byte for byte) to the plumb agent over the agent's Unix socket, where
 * all validation and work happen, and hands the agent's answer back to the runtime.
 *
 * Why C: a runtime starts this program for every ADD, DEL and CHECK, and its start is paid on
 * every pod. Statically linked, it needs nothing on the node (no Python, no shell, no socat) and
 * starts in well under a millisecond; the POSIX-shell client it replaces (dash, a pipeline and
 * socat with its 14 shared libraries) took about 5 ms on an idle node and 10 under load, a
 * quarter of an ADD (docs/cni.md, "Latency"). Built by `python -m cni.executable`.
 *
 * Wire format (cni/server.py): one HTTP/1.0 POST on the socket whose body is each set CNI_*
 * variable below as NAME=value, each ended by a NUL, one more NUL, then stdin verbatim; the
 * body ends where this side shuts down writing. The answer's body is "<stdout line>\n<stderr
 * text>"; status 200 means exit 0, any other 1.
 *
 * Errors of its own, as CNI error JSON on stdout with exit 1 (ERR-02): an agent that cannot be
 * reached or does not answer within PLUMB_CNI_TIMEOUT seconds (default 110) is code 11, "try
 * again later" (50 for STATUS: "cannot serve ADD", STS-02); an answer that is not CNI is 999.
 *
 * Environment of its own: PLUMB_CNI_SOCKET (default /var/run/plumb/cni.sock),
 * PLUMB_CNI_TIMEOUT.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/var/run/plumb/cni.sock"
#define DEFAULT_TIMEOUT_S 110.0
#define MAX_ANSWER (16 << 20) /* the agent's answers are a few KiB; this bounds a confused peer */
#define CNI_VERSION "1.1.0"
#define SUPPORTED "[\"0.3.0\",\"0.3.1\",\"0.4.0\",\"1.0.0\",\"1.1.0\"]"

enum { CODE_TRY_AGAIN_LATER = 11, CODE_NOT_AVAILABLE = 50, CODE_UNEXPECTED = 999 };

/* The variables a runtime sets for a plugin (CNI spec, "Parameters"); nothing else is sent. */
static const char *const FORWARDED[] = {
    "CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS",          "CNI_IFNAME",
    "CNI_ARGS",    "CNI_PATH",        "CNI_NETNS_OVERRIDE", NULL,
};

static const char REQUEST_HEAD[] =
    "POST /v1/cni HTTP/1.0\r\nContent-Type: application/x-plumb-cni\r\n\r\n";

/* --- a growable byte buffer ----------------------------------------------------------------- */

struct buffer {
    char *data;
    size_t len, cap;
};

static int buffer_reserve(struct buffer *b, size_t more) {
    if (b->len + more <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more)
        cap *= 2;
    char *data = realloc(b->data, cap);
    if (!data)
        return -1;
    b->data = data;
    b->cap = cap;
    return 0;
}

static int buffer_add(struct buffer *b, const void *bytes, size_t n) {
    if (buffer_reserve(b, n) < 0)
        return -1;
    memcpy(b->data + b->len, bytes, n);
    b->len += n;
    return 0;
}

/* --- answering the runtime ------------------------------------------------------------------ */

static void write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return; /* the runtime stopped listening: nothing left to tell it */
        }
        p += w;
        n -= (size_t)w;
    }
}

/* `text` as the inside of a JSON string: quotes, backslashes and control bytes escaped, bytes
 * outside ASCII as '?' so that the answer stays valid UTF-8 whatever a path holds. */
static void json_escape(struct buffer *out, const char *text) {
    for (const unsigned char *c = (const unsigned char *)text; *c; c++) {
        char esc[8];
        if (*c == '"' || *c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*c;
            buffer_add(out, esc, 2);
        } else if (*c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", *c);
            buffer_add(out, esc, 6);
        } else {
            char plain = *c < 0x80 ? (char)*c : '?';
            buffer_add(out, &plain, 1);
        }
    }
}

/* A CNI error of the executable's own, on stdout (ERR-02), and exit 1. */
static void fail(int code, const char *msg, const char *details_format, ...) {
    char details[1024];
    va_list args;
    va_start(args, details_format);
    vsnprintf(details, sizeof details, details_format, args);
    va_end(args);
    struct buffer out = {0};
    char head[96];
    int n = snprintf(head, sizeof head, "{\"cniVersion\":\"" CNI_VERSION "\",\"code\":%d,\"msg\":\"",
                     code);
    buffer_add(&out, head, (size_t)n);
    json_escape(&out, msg);
    buffer_add(&out, "\",\"details\":\"", 13);
    json_escape(&out, details);
    buffer_add(&out, "\"}\n", 3);
    if (out.data)
        write_all(STDOUT_FILENO, out.data, out.len);
    exit(1);
}

/* --- time ----------------------------------------------------------------------------------- */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double timeout_seconds(void) {
    const char *text = getenv("PLUMB_CNI_TIMEOUT");
    if (!text || !*text)
        return DEFAULT_TIMEOUT_S;
    char *end;
    double value = strtod(text, &end);
    return (*end || !(value > 0)) ? DEFAULT_TIMEOUT_S : value;
}

/* Wait until `fd` is ready for `events` or the deadline passes (then: -1, errno ETIMEDOUT). */
static int wait_for(int fd, short events, double deadline) {
    for (;;) {
        double left = deadline - now();
        if (left <= 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        struct pollfd p = {.fd = fd, .events = events};
        int ready = poll(&p, 1, left > 86400 ? 86400000 : (int)(left * 1000) + 1);
        if (ready > 0)
            return 0;
        if (ready < 0 && errno != EINTR)
            return -1;
    }
}

/* --- the call ------------------------------------------------------------------------------- */

/* The request: head, forwarded variables, end of the environment section, stdin. */
static void build_request(struct buffer *req, double deadline, int down_code) {
    buffer_add(req, REQUEST_HEAD, sizeof REQUEST_HEAD - 1);
    for (const char *const *name = FORWARDED; *name; name++) {
        const char *value = getenv(*name);
        if (!value)
            continue; /* unset and empty stay apart: only set variables are sent */
        buffer_add(req, *name, strlen(*name));
        buffer_add(req, "=", 1);
        buffer_add(req, value, strlen(value) + 1); /* with its NUL */
    }
    buffer_add(req, "", 1);
    for (;;) {
        if (wait_for(STDIN_FILENO, POLLIN, deadline) < 0)
            fail(down_code, "stdin did not end in time", "%s", strerror(errno));
        if (buffer_reserve(req, 65536) < 0)
            fail(down_code, "plumb executable out of memory", "reading stdin");
        ssize_t n = read(STDIN_FILENO, req->data + req->len, 65536);
        if (n > 0)
            req->len += (size_t)n;
        else if (n == 0 || (errno != EINTR && errno != EAGAIN))
            return; /* the end, or no stdin at all: the agent judges what it got */
    }
}

static int connect_agent(const char *path, double deadline, int down_code) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path)
        fail(down_code, "plumb agent not reachable", "socket %s: path too long", path);
    memcpy(addr.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        fail(down_code, "plumb agent not reachable", "socket: %s", strerror(errno));
    /* A Unix connect blocks only while the agent's backlog is full; bound it. */
    double left = deadline - now();
    struct timeval tv = {.tv_sec = (time_t)left, .tv_usec = (long)((left - (time_t)left) * 1e6)};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0)
        fail(down_code, "plumb agent not reachable", "socket %s: %s", path, strerror(errno));
    return fd;
}

static void send_request(int fd, const struct buffer *req, double deadline, int down_code) {
    size_t sent = 0;
    while (sent < req->len) {
        ssize_t n = send(fd, req->data + sent, req->len - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) {
            sent += (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (wait_for(fd, POLLOUT, deadline) < 0)
                fail(down_code, "plumb agent did not answer in time", "%s", strerror(errno));
        } else {
            break; /* the agent closed early: its answer (if any) says why */
        }
    }
    shutdown(fd, SHUT_WR);
}

static void read_answer(int fd, struct buffer *answer, double deadline, int down_code) {
    for (;;) {
        if (wait_for(fd, POLLIN, deadline) < 0)
            fail(down_code, "plumb agent did not answer in time", "%s", strerror(errno));
        if (buffer_reserve(answer, 65536) < 0)
            fail(down_code, "plumb executable out of memory", "reading the answer");
        ssize_t n = recv(fd, answer->data + answer->len, 65536, MSG_DONTWAIT);
        if (n > 0) {
            answer->len += (size_t)n;
            if (answer->len > MAX_ANSWER)
                fail(CODE_UNEXPECTED, "unexpected answer from the plumb agent", "too long");
        } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            buffer_add(answer, "", 1); /* a C string from here on */
            answer->len--;
            return;
        }
    }
}

/* Hand the agent's answer to the runtime; returns the exit status. */
static int relay(const struct buffer *answer, int down_code) {
    if (answer->len == 0)
        fail(down_code, "plumb agent not reachable", "it closed the connection without answering");
    int status = 0;
    if (answer->len > 12 && !strncmp(answer->data, "HTTP/1.", 7))
        status = atoi(answer->data + 9);
    const char *body = memmem(answer->data, answer->len, "\r\n\r\n", 4);
    body = body ? body + 4 : answer->data + answer->len;
    const char *end = answer->data + answer->len;
    const char *newline = memchr(body, '\n', (size_t)(end - body));
    const char *out_end = newline ? newline : end;
    const char *err = newline ? newline + 1 : end;
    if (err < end) {
        write_all(STDERR_FILENO, err, (size_t)(end - err));
        write_all(STDERR_FILENO, "\n", 1);
    }
    if (status != 200 && (out_end == body || *body != '{'))
        fail(CODE_UNEXPECTED, "unexpected answer from the plumb agent", "HTTP status %d", status);
    if (out_end > body) {
        write_all(STDOUT_FILENO, body, (size_t)(out_end - body));
        write_all(STDOUT_FILENO, "\n", 1);
    }
    return status == 200 ? 0 : 1;
}

int main(void) {
    const char *command = getenv("CNI_COMMAND");
    if (!command || !*command) {
        static const char about[] =
            "CNI plumb plugin; CNI protocol versions supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0\n";
        write_all(STDERR_FILENO, about, sizeof about - 1);
        return 0;
    }
    if (!strcmp(command, "VERSION")) {
        static const char version[] =
            "{\"cniVersion\":\"" CNI_VERSION "\",\"supportedVersions\":" SUPPORTED "}\n";
        write_all(STDOUT_FILENO, version, sizeof version - 1);
        return 0;
    }
    signal(SIGPIPE, SIG_IGN);
    /* STATUS says "cannot serve ADD" (STS-02); every other verb says "try again later". */
    int down_code = strcmp(command, "STATUS") ? CODE_TRY_AGAIN_LATER : CODE_NOT_AVAILABLE;
    const char *path = getenv("PLUMB_CNI_SOCKET");
    if (!path || !*path)
        path = DEFAULT_SOCKET;
    double deadline = now() + timeout_seconds();

    struct buffer request = {0}, answer = {0};
    build_request(&request, deadline, down_code);
    int fd = connect_agent(path, deadline, down_code);
    send_request(fd, &request, deadline, down_code);
    read_answer(fd, &answer, deadline, down_code);
    close(fd);
    return relay(&answer, down_code);
}
