/*
 * listener_unix.c - the listening socket behind a pipe name.
 *
 * A Windows server makes one pipe instance per CreateNamedPipe call and each
 * instance takes one client. Here all the instances of one name in one loop
 * share one listening socket (the loop's registry: path -> listener, with
 * its instances; unlinked and closed with the last instance, or kept aside
 * a while: see "a name closed and made again"). Accepted
 * sockets go at once to a free instance (listening: no client yet,
 * connect() pending or not), the one free the longest (pick_free).
 *
 * Clients get PIPE_BUSY when every instance is busy, as on Windows, without
 * any help from the client: a non-blocking connect() to a Unix socket fails
 * with EAGAIN when the listener's queue holds more than its backlog. So the
 * backlog is kept at (free instances - 1), letting at most as many clients
 * queue as there are free instances; with none free the backlog is 0, which
 * still lets one through, so we queue a connection of our own (the plug,
 * recognised by its autobound abstract address when it is accepted later).
 * listen() may be called again on a listening socket to change the backlog
 * (and wakes blocking connects, which simply wait: socat does that).
 * The plug costs seven system calls (socket, bind, getsockname, connect;
 * later accept4 and two closes), and the last free instance is usually taken
 * by a connect whose callback creates the next instance at once. So taking
 * the last one only marks the listener (plug_wanted), and the plug is made
 * by np_loop_wait once the completions queued so far have been handed out
 * (their callbacks have run), if no instance came free meanwhile - or by an
 * open() of this loop that is about to connect to it. Until then one client
 * of another process may queue instead of getting PIPE_BUSY; it is accepted
 * as soon as an instance comes free.
 *
 * Accepting: on Windows the open itself connects an instance listening
 * then. An open of this loop accepts at once (np_client_open). A client of
 * another process is accepted when epoll reports the listener, when a
 * connect() or any other operation starts on an instance with no client
 * yet (so a read right after the open has its data), and before a
 * listening instance stops listening (pipe_unix.c, take_queued): it goes to
 * an instance listening when it connected, if one still is. The listener is
 * level-triggered while it can take what is queued: every wait reports a
 * queued client, so a new instance, or one closed or disconnected after
 * its client, needs no accept4 of its own (one that must fail, once per
 * connection in a create/connect/close cycle). When epoll reports clients that no instance
 * can take (none free: the plug, clients of another process, EMFILE), it
 * goes edge-triggered, or every wait would return at once; then accept4 is
 * tried whenever something may be queued (maybe_queued: the last try did
 * not end in EAGAIN) and an instance is free, and once a try ends in
 * EAGAIN (the queue is empty) it goes back to level-triggered.
 *
 * Ownership across processes: beside the socket PATH the owner keeps
 * PATH.lock, holding an OFD write lock on its first byte (fcntl
 * F_OFD_SETLK: like flock, released when the process dies, and others can
 * test it with F_OFD_GETLK without taking it; the second byte, see "the
 * owner's lock"). The lock file also carries the pipe's description
 * (type, max_instances, directions) for clients, which Windows gives them
 * from the kernel. A socket file whose lock is free and that refuses
 * connections was left by a dead server: it is removed. A live owner in
 * another process (or another Lua state) makes create fail with
 * ACCESS_DENIED (first_pipe_instance) or ADDRESS_IN_USE: on Unix all the
 * instances of one name live in one process.
 *
 * The files go with the process, as a Windows pipe does (see "files removed
 * at exit" below).
 *
 * A name closed and made again: a server that serves one client at a time
 * closes its instance and creates the next one at once, and making the
 * socket and lock files anew is most of what that costs (two inodes made
 * and removed per client: the file system's work, and on ext4 about three
 * times a kept name's whole connection). So a listener whose last instance
 * closes is kept aside (parked) until the loop next waits for events (the
 * next np.step, or the next round of this one): its socket file renamed to
 * PATH.idle~~~ (idle_path_of; the name is gone for clients at once, as on
 * Windows), its queue emptied, its lock let go (another process may take
 * the name at once). A create of the same name, with the same options,
 * before that wait takes the lock again and renames the socket back: no
 * file made, none removed. Otherwise that wait removes both files, as the
 * close itself used to (remove_parked_files). The idle socket file is the
 * lock holder's to remove: a server that takes over a lock file left there
 * (not one it made) removes one a parked owner left, and a parked owner
 * that finds its idle file gone, or someone else's, makes its socket anew
 * and leaves the files alone.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "unix.h"

struct np_listener {
  np_watch watch; /* first: epoll data.ptr */
  np_loop *loop;
  np_listener *next; /* the loop's table: the next in this chain */
  unsigned hash;     /* of path (path_hash) */
  char path[NP_SUN_PATH];
  char *lock_path;
  int fd, lock_fd, plug_fd;
  dev_t dev; /* the socket file we made: unlink only that one */
  ino_t ino;
  dev_t lock_dev; /* the lock file we hold: the same */
  ino_t lock_ino;
  pid_t pid; /* the process that made them (not a fork()ed child) */
  np_listener *exit_prev, *exit_next; /* the process's registry */
  int files_gone; /* removed (at exit): never again */
  struct sockaddr_un plug_addr;
  socklen_t plug_len;
  int backlog;
  int maybe_queued; /* a client may be queued: accept4 may succeed */
  int level;        /* registered level-triggered (see Accepting) */
  int plug_wanted;  /* counted in loop->plugs_wanted, in its plug list */
  np_listener *plug_prev, *plug_next;
  int parked;             /* kept aside: PATH.idle, lock let go */
  np_listener *park_next; /* the loop's parked list */
  unsigned mode;          /* the socket file's, as asked */
  np_pipe_meta meta;
  unsigned n_instances, n_free;
  np_pipe *instances;
  np_pipe *free_head, *free_tail;
};

static const char meta_format[] =
    "namedpipe=1 type=%s max=%u inbound=%d outbound=%d\n";

int np_listener_type(const np_listener *l) { return l->meta.sock_type; }
const np_pipe_meta *np_listener_meta(const np_listener *l) { return &l->meta; }
int np_listener_fd(const np_listener *l) { return l->fd; }

/* "0600", "600", "0660": the socket file's permission bits (connecting needs
 * write permission on it). */
int np_parse_file_mode(const char *s, unsigned *mode) {
  size_t i, n = strlen(s);
  unsigned v = 0;
  if (n == 4 && s[0] == '0') {
    s++;
    n--;
  }
  if (n != 3) return 0;
  for (i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '7') return 0;
    v = v * 8 + (unsigned)(s[i] - '0');
  }
  *mode = v;
  return 1;
}

static char *lock_path_of(const char *path) {
  size_t n = strlen(path);
  char *s = (char *)malloc(n + sizeof ".lock");
  if (s) {
    memcpy(s, path, n);
    memcpy(s + n, ".lock", sizeof ".lock");
  }
  return s;
}

/* PATH.idle~~~...: where a parked listener's socket file waits. Padded
 * with '~' to NP_SUN_PATH bytes or more, longer than any socket path can
 * be: so it is never the socket of another pipe (PATH.idle is a name like
 * any), nor, ending in '~' or ".idle", any pipe's lock file. */
#define IDLE_PATH_MAX (NP_SUN_PATH + sizeof ".idle")
static void idle_path_of(const char *path, char idle[IDLE_PATH_MAX]) {
  size_t n = strlen(path);
  memcpy(idle, path, n);
  memcpy(idle + n, ".idle", sizeof ".idle" - 1);
  n += sizeof ".idle" - 1;
  while (n < NP_SUN_PATH) idle[n++] = '~';
  idle[n] = '\0';
}

static void owned_elsewhere(int first, np_status *st) {
  if (first)
    np_status_errno(st, NP_ACCESS_DENIED, EACCES);
  else
    np_status_errno(st, NP_ADDRESS_IN_USE, EADDRINUSE);
}

/* ------------------------------------------------------ the owner's lock */

/* Two bytes of the lock file are locked. OWNER_BYTE: the name's owner
 * holds it while it has instances. REMOVER_BYTE: a server removing the
 * files of a name it parked (remove_parked_files) holds it, then the
 * owner's byte, for the few system calls that takes; a server that wants
 * the name then waits for it (lock_waiting_out_removers) instead of
 * failing as if the name were owned. */
enum { OWNER_BYTE = 0, REMOVER_BYTE = 1 };

/* A lock of type on n bytes from byte. */
static void byte_range(struct flock *fl, short type, off_t byte, off_t n) {
  memset(fl, 0, sizeof *fl);
  fl->l_type = type;
  fl->l_whence = SEEK_SET;
  fl->l_start = byte;
  fl->l_len = n;
}

static int set_lock(int fd, short type, off_t byte) {
  struct flock fl;
  byte_range(&fl, type, byte, 1);
  return fcntl(fd, F_OFD_SETLK, &fl);
}

/* Someone else (another open file description) holds that byte. */
static int held_elsewhere(int fd, off_t byte) {
  struct flock fl;
  byte_range(&fl, F_WRLCK, byte, 1);
  return fcntl(fd, F_OFD_GETLK, &fl) == 0 && fl.l_type != F_UNLCK;
}

/* That byte locked, waiting while a remover is at work (20 us, doubling,
 * up to about 20 ms in all: a remover holds it for a few system calls,
 * longer only if it is preempted). -1 with errno: EAGAIN when someone
 * holds it with no remover at work (an owner), or for longer than that.
 * A remover seen gone may just have let go of the byte too: it is tried
 * once more before the holder is taken for an owner. */
static int lock_waiting_out_removers(int fd, off_t byte) {
  long pause_ns = 20000, waited_ns = 0;
  for (;;) {
    struct timespec ts;
    if (set_lock(fd, F_WRLCK, byte) == 0) return 0;
    if (errno != EAGAIN && errno != EACCES) return -1;
    if (!held_elsewhere(fd, REMOVER_BYTE)) {
      if (set_lock(fd, F_WRLCK, byte) == 0) return 0;
      if (errno != EAGAIN && errno != EACCES) return -1;
      if (!held_elsewhere(fd, REMOVER_BYTE)) {
        errno = EAGAIN;
        return -1;
      }
    }
    if (waited_ns >= 20000000L) {
      errno = EAGAIN;
      return -1;
    }
    ts.tv_sec = 0;
    ts.tv_nsec = pause_ns;
    nanosleep(&ts, NULL);
    waited_ns += pause_ns;
    if (pause_ns < 2000000L) pause_ns *= 2;
  }
}

/* The lock file is written (chmod'ed, its description put in), and in a
 * directory others can write to (an absolute socket path in /tmp) someone
 * may have put a file there first. O_NOFOLLOW stops a symlink, not a hard
 * link to a file of ours elsewhere, nor a FIFO, nor a file another user
 * keeps open to rewrite the description clients read. So the file must be
 * a plain one of our own, with no other name, that nobody else may write
 * to: as a server makes it ((mode & 0444) | 0600). A stale one of a dead
 * server of ours passes. sb: the file's fstat. */
static int lock_file_ours(const struct stat *sb) {
  return S_ISREG(sb->st_mode) && sb->st_uid == geteuid() &&
         sb->st_nlink <= 1 && (sb->st_mode & (S_IWGRP | S_IWOTH)) == 0;
}

/* The lock file opened (made if missing), locked and checked; *held: its
 * fstat once locked (publish_meta writes only what differs from it). The
 * lock comes before the look: nobody writes the file but its lock's
 * holder, so what fstat tells then stays true while we hold it. */
static int take_ownership(np_listener *l, int first, unsigned mode,
                          struct stat *held, np_status *st) {
  /* Clients may read the description; only the owner writes it. */
  mode_t lock_mode = (mode_t)((mode & 0444) | 0600);
  int attempt;
  for (attempt = 0; attempt < 8; attempt++) {
    struct stat named;
    int fd = open(l->lock_path,
                  O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY |
                      O_NONBLOCK,
                  lock_mode);
    if (fd < 0) {
      /* (a directory in its place: EISDIR, someone else's doing too) */
      if (errno == EISDIR)
        np_status_errno(st, NP_ACCESS_DENIED, EISDIR);
      else
        np_status_errno(st, np_errno_err(errno), errno);
      return 0;
    }
    if (lock_waiting_out_removers(fd, OWNER_BYTE) != 0) {
      int e = errno;
      close(fd);
      if (e == EAGAIN || e == EACCES)
        owned_elsewhere(first, st);
      else
        np_status_errno(st, np_errno_err(e), e);
      return 0;
    }
    if (fstat(fd, held) != 0 || !lock_file_ours(held)) {
      close(fd);
      np_status_errno(st, NP_ACCESS_DENIED, EACCES);
      return 0;
    }
    /* The previous owner unlinks the file before letting go of it: if that
     * happened between our open and our lock, we hold an orphan. */
    if (stat(l->lock_path, &named) == 0 && held->st_dev == named.st_dev &&
        held->st_ino == named.st_ino) {
      /* A lock file we did not make (one we make is empty) was left by a
       * server that died or closed while parked: a PATH.idle beside it is
       * now ours to remove (see the top of the file). */
      if (held->st_size > 0) {
        char idle[IDLE_PATH_MAX];
        idle_path_of(l->path, idle);
        unlink(idle);
      }
      l->lock_fd = fd;
      l->lock_dev = held->st_dev;
      l->lock_ino = held->st_ino;
      return 1;
    }
    close(fd);
  }
  owned_elsewhere(first, st);
  return 0;
}

/* held: the lock file as take_ownership found it (a new one: empty, with
 * the mode asked), so a fresh file costs one write. */
static void publish_meta(np_listener *l, unsigned mode,
                         const struct stat *held) {
  char line[128];
  mode_t lock_mode = (mode_t)((mode & 0444) | 0600);
  int n = snprintf(line, sizeof line, meta_format,
                   l->meta.sock_type == SOCK_SEQPACKET ? "message" : "byte",
                   l->meta.max_instances, l->meta.inbound, l->meta.outbound);
  /* A stale file may belong to us with other bits; ours wins. */
  if ((held->st_mode & 07777) != lock_mode &&
      fchmod(l->lock_fd, lock_mode) != 0) { /* keep it */ }
  /* Written first, then cut to its length if a stale one was longer (a
   * reader in between stops at the newline). Never truncated to zero and
   * written again: ext4 takes that for a file being replaced and writes its
   * blocks to disk when it is closed (auto_da_alloc), which made closing a
   * server whose name goes away wait for the disk, on a file that is
   * unlinked anyway. */
  if (n > 0 && pwrite(l->lock_fd, line, (size_t)n, 0) == n &&
      held->st_size > n) {
    if (ftruncate(l->lock_fd, n) != 0) { /* the newline ends the line */ }
  }
}

int np_read_meta(const char *path, np_pipe_meta *meta) {
  char *lock_path = lock_path_of(path), line[128], type[16];
  ssize_t n;
  int fd, ok;
  if (!lock_path) return 0;
  fd = open(lock_path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  free(lock_path);
  if (fd < 0) return 0;
  /* Nobody holding the lock: what the file says is a dead server's. */
  if (!held_elsewhere(fd, OWNER_BYTE)) {
    close(fd);
    return 0;
  }
  n = read(fd, line, sizeof line - 1);
  close(fd);
  if (n <= 0) return 0;
  line[n] = '\0';
  ok = sscanf(line, "namedpipe=1 type=%15s max=%u inbound=%d outbound=%d",
              type, &meta->max_instances, &meta->inbound,
              &meta->outbound) == 4;
  meta->sock_type = strcmp(type, "message") == 0 ? SOCK_SEQPACKET : SOCK_STREAM;
  return ok && meta->max_instances >= 1 &&
         meta->max_instances <= NP_UNLIMITED_INSTANCES;
}

/* ------------------------------------------------- files removed at exit */

/* A Windows pipe goes with its process. The socket and lock files would
 * stay whenever the Lua state is not closed: os.exit(code) without close
 * (C exit()), a host that never calls lua_close. So every listener is in a
 * process-wide registry, and an atexit handler removes the files of those
 * still open. Several Lua states on several threads share it, hence the
 * mutex (held across fork(), so that a child never inherits it locked).
 * A fork()ed child has copies of its parent's listeners: neither its exit
 * nor its lua_close may remove its parent's files, so they are removed
 * only by the process that made them (pid). A process killed outright
 * (SIGKILL, or any signal whose default action ends it) runs no handler:
 * its files stay until the next server of the name, which finds the lock
 * free and takes them over (clear_path).
 *
 * In a module loaded with dlopen (as Lua loads it), glibc runs the
 * handler when the module is unloaded (lua_close of the last state that
 * loaded it), with nothing left registered then, and forgets it: no
 * handler outlives the code. */

static pthread_mutex_t exit_mutex = PTHREAD_MUTEX_INITIALIZER;
static np_listener *exit_list;
static int exit_hooked;

static void exit_lock(void) { pthread_mutex_lock(&exit_mutex); }
static void exit_unlock(void) { pthread_mutex_unlock(&exit_mutex); }

static int is_file(const char *path, dev_t dev, ino_t ino) {
  struct stat sb;
  return lstat(path, &sb) == 0 && sb.st_dev == dev && sb.st_ino == ino;
}

/* A parked listener has let its lock go: its files are still its own only
 * if it gets the lock back and finds its socket file still at PATH.idle.
 * Another server may have taken the name over meanwhile (it opens the same
 * lock file, and removes PATH.idle as it does), and hold the name now, or
 * have closed it, removing the files or parking them in its turn. The
 * remover's byte first, so that a server wanting the name meanwhile waits
 * (and so does another remover); then the owner's byte, which only an
 * owner can be holding then. Both are let go explicitly, not by the close
 * of the descriptor: the lock belongs to the open file, which a fork()ed
 * child shares, and the exit handler closes nothing. */
static void remove_parked_files(np_listener *l) {
  char idle[IDLE_PATH_MAX];
  struct flock fl;
  if (lock_waiting_out_removers(l->lock_fd, REMOVER_BYTE) != 0) return;
  if (set_lock(l->lock_fd, F_WRLCK, OWNER_BYTE) == 0) {
    idle_path_of(l->path, idle);
    if (is_file(idle, l->dev, l->ino) &&
        is_file(l->lock_path, l->lock_dev, l->lock_ino)) {
      unlink(idle);
      unlink(l->lock_path);
    }
  }
  byte_range(&fl, F_UNLCK, OWNER_BYTE, 2); /* (both) */
  if (fcntl(l->lock_fd, F_OFD_SETLK, &fl) != 0) { /* closing does it */ }
}

/* Socket first, lock last: whoever takes the lock next finds no socket of
 * ours to trip over. A file someone replaced is theirs: left alone.
 * Called with the mutex held. */
static void remove_files(np_listener *l) {
  struct stat sb;
  if (l->files_gone || l->pid != getpid()) return;
  l->files_gone = 1;
  if (l->parked) {
    remove_parked_files(l);
    return;
  }
  if (lstat(l->path, &sb) == 0 && sb.st_dev == l->dev && sb.st_ino == l->ino)
    unlink(l->path);
  if (lstat(l->lock_path, &sb) == 0 && sb.st_dev == l->lock_dev &&
      sb.st_ino == l->lock_ino)
    unlink(l->lock_path);
}

static void remove_all_at_exit(void) {
  np_listener *l;
  exit_lock();
  for (l = exit_list; l; l = l->exit_next) remove_files(l);
  exit_unlock();
}

static void exit_register(np_listener *l) {
  exit_lock();
  if (!exit_hooked) {
    exit_hooked = 1;
    /* (should either fail, files stay behind as before: no worse) */
    if (atexit(remove_all_at_exit) != 0) { /* nothing else to do */ }
    if (pthread_atfork(exit_lock, exit_unlock, exit_unlock) != 0) { /* idem */ }
  }
  l->pid = getpid();
  l->exit_prev = NULL;
  l->exit_next = exit_list;
  if (exit_list) exit_list->exit_prev = l;
  exit_list = l;
  exit_unlock();
}

/* Out of the registry, its files removed (if this process made them). */
static void exit_unregister(np_listener *l) {
  exit_lock();
  if (l->exit_prev)
    l->exit_prev->exit_next = l->exit_next;
  else
    exit_list = l->exit_next;
  if (l->exit_next) l->exit_next->exit_prev = l->exit_prev;
  remove_files(l);
  exit_unlock();
}

/* -------------------------------------------------------- the socket file */

static void fill_addr(struct sockaddr_un *sa, const char *path) {
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  memcpy(sa->sun_path, path, strlen(path) + 1);
}

/* Something at the path is ours to replace only if it is a socket nobody
 * listens on: a server that died (its lock, now ours, was free). */
static int clear_path(const char *path, int first, np_status *st) {
  struct sockaddr_un sa;
  struct stat sb;
  int fd, rc, e;
  if (lstat(path, &sb) != 0) {
    if (errno == ENOENT) return 1;
    np_status_errno(st, np_errno_err(errno), errno);
    return 0;
  }
  if (!S_ISSOCK(sb.st_mode)) {
    np_status_errno(st, NP_ADDRESS_IN_USE, EADDRINUSE);
    return 0;
  }
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    np_status_errno(st, np_errno_err(errno), errno);
    return 0;
  }
  fill_addr(&sa, path);
  rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
  e = errno;
  close(fd);
  if (rc != 0 && e == ENOENT) return 1;
  if (rc != 0 && e == ECONNREFUSED) {
    if (unlink(path) == 0 || errno == ENOENT) return 1;
    np_status_errno(st, np_errno_err(errno), errno);
    return 0;
  }
  /* Accepted, queue full, or a listener of the other type: alive, and not
   * a namedpipe server of ours (no lock held) - someone else's socket. */
  if (rc == 0 || e == EAGAIN || e == EPROTOTYPE) {
    owned_elsewhere(first, st);
    return 0;
  }
  np_status_errno(st, np_errno_err(e), e);
  return 0;
}

/* The socket, bound at the path and listening. The bind is tried first:
 * usually nothing is there, and a look beforehand would cost a system call
 * per create. What is there (EADDRINUSE) is cleared if it is a dead
 * server's (clear_path), and the bind tried once more. */
static int bind_socket(np_listener *l, unsigned mode, int first,
                       np_status *st) {
  struct sockaddr_un sa;
  struct stat sb;
  l->fd = socket(AF_UNIX, l->meta.sock_type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (l->fd < 0) goto fail;
  /* Linux creates the file with the socket inode's mode minus the umask:
   * set it first so the file is never more open than asked, then set it
   * exactly if the umask took bits that were asked for. */
  if (fchmod(l->fd, (mode_t)mode) != 0) goto fail;
  fill_addr(&sa, l->path);
  if (bind(l->fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    if (errno != EADDRINUSE) goto fail;
    if (!clear_path(l->path, first, st)) return 0;
    if (bind(l->fd, (struct sockaddr *)&sa, sizeof sa) != 0) goto fail;
  }
  if (lstat(l->path, &sb) != 0 ||
      ((sb.st_mode & 07777) != (mode_t)mode &&
       chmod(l->path, (mode_t)mode) != 0)) {
    int e = errno;
    unlink(l->path);
    errno = e;
    goto fail;
  }
  l->dev = sb.st_dev;
  l->ino = sb.st_ino;
  if (listen(l->fd, 0) != 0) {
    int e = errno;
    unlink(l->path);
    errno = e;
    goto fail;
  }
  l->backlog = 0;
  return 1;
fail:
  np_status_errno(st, np_errno_err(errno), errno);
  return 0;
}

/* ------------------------------------------------- the loop's listeners */

/* A loop finds a name's listener on every create and open, and a process
 * may serve thousands of names: a table of chains by a hash of the path,
 * doubled whenever it holds as many listeners as chains, so that neither
 * walks every name the loop serves. A table that cannot grow (no memory)
 * keeps its size: longer chains, the same answers.
 *
 * The hash takes the path 8 bytes at a time (a byte at a time, FNV-1a,
 * was 250 instructions for a 40-byte path, a tenth of what namedpipe's C
 * spends on a connection in the churn benchmark), and ends with a full
 * 64-bit mix: the chain is chosen by the low bits, and after a multiply
 * those depend only on the low bits of what went in, so without the mix
 * names that differ only in their last bytes (worker-0001, worker-0002...)
 * shared a few chains (100 such names: one chain of 100). With it, names
 * of that kind spread as at random (100 in 128 chains: longest 3 to 5;
 * 10,000 in 16,384: 5 or 6). */
static unsigned path_hash(const char *path) {
  size_t n = strlen(path);
  uint64_t h = 0x9e3779b97f4a7c15u ^ (uint64_t)n, w;
  for (; n >= 8; path += 8, n -= 8) {
    memcpy(&w, path, 8);
    h = (h ^ w) * 0xff51afd7ed558ccdu;
    h ^= h >> 32;
  }
  w = 0;
  memcpy(&w, path, n);
  h = (h ^ w) * 0xff51afd7ed558ccdu;
  h ^= h >> 33; /* (the finalizer of MurmurHash3's 64-bit variant) */
  h *= 0xc4ceb9fe1a85ec53u;
  h ^= h >> 33;
  return (unsigned)h;
}

static np_listener **chain_of(np_loop *loop, unsigned hash) {
  return &loop->listener_table[hash & (loop->listener_slots - 1)];
}

/* The table exists (made with the first listener); 0: no memory. */
static int table_ready(np_loop *loop) {
  if (loop->listener_table) return 1;
  loop->listener_table = (np_listener **)calloc(16, sizeof *loop->listener_table);
  if (!loop->listener_table) return 0;
  loop->listener_slots = 16;
  return 1;
}

static void table_grow(np_loop *loop) {
  unsigned slots = loop->listener_slots * 2, i;
  np_listener **t;
  if (slots > (1u << 24)) return;
  t = (np_listener **)calloc(slots, sizeof *t);
  if (!t) return;
  for (i = 0; i < loop->listener_slots; i++) {
    np_listener *l = loop->listener_table[i], *next;
    for (; l; l = next) {
      next = l->next;
      l->next = t[l->hash & (slots - 1)];
      t[l->hash & (slots - 1)] = l;
    }
  }
  free(loop->listener_table);
  loop->listener_table = t;
  loop->listener_slots = slots;
}

static void table_add(np_listener *l) {
  np_loop *loop = l->loop;
  np_listener **chain;
  if (loop->n_listeners >= loop->listener_slots) table_grow(loop);
  chain = chain_of(loop, l->hash);
  l->next = *chain;
  *chain = l;
  loop->n_listeners++;
}

static void table_remove(np_listener *l) {
  np_listener **pp = chain_of(l->loop, l->hash);
  while (*pp != l) pp = &(*pp)->next;
  *pp = l->next;
  l->loop->n_listeners--;
}

static np_listener *table_find(np_loop *loop, const char *path) {
  unsigned h;
  np_listener *l;
  if (!loop->listener_table) return NULL;
  h = path_hash(path);
  for (l = *chain_of(loop, h); l; l = l->next)
    if (l->hash == h && strcmp(l->path, path) == 0) return l;
  return NULL;
}

static np_listener *listener_open(np_loop *loop, const char *path,
                                  const np_server_options *o, int sock_type,
                                  unsigned mode, np_status *st) {
  struct stat held;
  np_listener *l = (np_listener *)calloc(1, sizeof *l);
  if (!l || !(l->lock_path = lock_path_of(path)) || !table_ready(loop)) {
    if (l) free(l->lock_path);
    free(l);
    np_status_errno(st, NP_NO_MEMORY, ENOMEM);
    return NULL;
  }
  l->watch = NP_WATCH_LISTENER;
  l->loop = loop;
  l->fd = l->lock_fd = l->plug_fd = -1;
  strcpy(l->path, path);
  l->hash = path_hash(path);
  l->mode = mode;
  l->meta.sock_type = sock_type;
  l->meta.max_instances = o->max_instances;
  l->meta.inbound = o->access_inbound != 0;
  l->meta.outbound = o->access_outbound != 0;
  if (!take_ownership(l, o->first_pipe_instance, mode, &held, st)) goto fail;
  publish_meta(l, mode, &held);
  if (!bind_socket(l, mode, o->first_pipe_instance, st)) goto fail_owned;
  l->level = 1;
  if (np_watch_add(loop, l->fd, EPOLLIN, l) != 0) {
    np_status_errno(st, np_errno_err(errno), errno);
    unlink(l->path);
    goto fail_owned;
  }
  table_add(l);
  exit_register(l);
  return l;
fail_owned:
  unlink(l->lock_path); /* still ours: we hold its lock */
fail:
  if (l->fd >= 0) close(l->fd);
  if (l->lock_fd >= 0) close(l->lock_fd);
  free(l->lock_path);
  free(l);
  return NULL;
}

/* In the loop's plug list (np_listener_plug_deferred walks only that), or
 * out of it. */
static void want_plug(np_listener *l, int on) {
  np_loop *loop = l->loop;
  if (l->plug_wanted == on) return;
  l->plug_wanted = on;
  if (on) {
    loop->plugs_wanted++;
    l->plug_prev = NULL;
    l->plug_next = loop->plug_head;
    if (loop->plug_head) loop->plug_head->plug_prev = l;
    loop->plug_head = l;
  } else {
    loop->plugs_wanted--;
    if (l->plug_prev)
      l->plug_prev->plug_next = l->plug_next;
    else
      loop->plug_head = l->plug_next;
    if (l->plug_next) l->plug_next->plug_prev = l->plug_prev;
  }
}

/* Its socket closed (a client still queued is reset), its files removed
 * (exit_unregister), the block freed. */
static void listener_free(np_listener *l) {
  /* (the files first: a parked socket's inode, still open, cannot have
   * been reused for another file at PATH.idle) */
  exit_unregister(l);
  np_watch_close(l->loop, l->fd);
  if (l->plug_fd >= 0) close(l->plug_fd);
  close(l->lock_fd);
  free(l->lock_path);
  free(l);
}

/* The pipe l serves is of the type, directions and max_instances o asks
 * for (Windows wants them the same for every instance of a name). */
static int same_kind(const np_listener *l, int sock_type,
                     const np_server_options *o) {
  return l->meta.sock_type == sock_type &&
         l->meta.max_instances == o->max_instances &&
         l->meta.inbound == (o->access_inbound != 0) &&
         l->meta.outbound == (o->access_outbound != 0);
}

/* ------------------------------------------- a name closed and made again */

static void parked_unlink(np_listener *l) {
  np_listener **pp = &l->loop->parked_head;
  while (*pp != l) pp = &(*pp)->park_next;
  *pp = l->park_next;
  l->loop->n_parked--;
}

/* At most this many kept aside between two waits (a loop that closes
 * hundreds of names in one callback removes the rest at once). */
#define NP_PARKED_MAX 8

/* The last instance has gone: kept aside (see the top of the file), or 0
 * when it cannot be (then listener_free does what it must). */
static int park(np_listener *l) {
  np_loop *loop = l->loop;
  char idle[IDLE_PATH_MAX];
  int renamed = 0;
  if (loop->closing || loop->n_parked >= NP_PARKED_MAX) return 0;
  idle_path_of(l->path, idle);
  exit_lock();
  if (!l->files_gone && l->pid == getpid() &&
      is_file(l->path, l->dev, l->ino) && rename(l->path, idle) == 0) {
    l->parked = 1; /* (remove_files: the socket file is PATH.idle now) */
    renamed = 1;
  }
  exit_unlock();
  if (!renamed) return 0;
  /* Whatever is queued came for the instances that closed: it goes as
   * when the socket closed (a namedpipe client reads the end either way),
   * the plug with it. A client that found the name before the rename may
   * still queue: it is reset when the listener goes, or taken by the next
   * instance if the name is made again first. */
  if (l->plug_fd >= 0) {
    close(l->plug_fd);
    l->plug_fd = -1;
  }
  for (;;) {
    int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd >= 0) {
      close(fd);
      continue;
    }
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return 0; /* (EMFILE) */
    break;
  }
  l->maybe_queued = 0;
  if (set_lock(l->lock_fd, F_UNLCK, OWNER_BYTE) != 0) return 0;
  l->park_next = loop->parked_head;
  loop->parked_head = l;
  loop->n_parked++;
  return 1;
}

/* The parked listener of path in this loop, out of the parked list, or
 * NULL. */
static np_listener *parked_take(np_loop *loop, const char *path) {
  np_listener *l;
  for (l = loop->parked_head; l; l = l->park_next)
    if (strcmp(l->path, path) == 0) {
      parked_unlink(l);
      return l;
    }
  return NULL;
}

/* The name again, as it was: the lock taken back, the socket file renamed
 * back to PATH (never over something someone put there meanwhile). 0: it
 * cannot be (other options, the name taken over, PATH.idle gone...); the
 * caller frees l and makes the name anew. */
static int unpark(np_listener *l, int sock_type, const np_server_options *o,
                  unsigned mode) {
  char idle[IDLE_PATH_MAX];
  int back = 0;
  if (!same_kind(l, sock_type, o) || l->mode != mode || l->pid != getpid())
    return 0;
  if (lock_waiting_out_removers(l->lock_fd, OWNER_BYTE) != 0 ||
      !is_file(l->lock_path, l->lock_dev, l->lock_ino))
    return 0;
  idle_path_of(l->path, idle);
#ifdef RENAME_NOREPLACE
  exit_lock();
  if (!l->files_gone && is_file(idle, l->dev, l->ino) &&
      renameat2(AT_FDCWD, idle, AT_FDCWD, l->path, RENAME_NOREPLACE) == 0) {
    l->parked = 0;
    back = 1;
  }
  exit_unlock();
#endif
  /* as listener_open leaves it: the instances to come set it */
  if (back && l->backlog != 0 && listen(l->fd, 0) == 0) l->backlog = 0;
  return back;
}

void np_listener_drop_parked(np_loop *loop) {
  while (loop->parked_head) {
    np_listener *l = loop->parked_head;
    parked_unlink(l);
    listener_free(l);
  }
}

static void listener_destroy(np_listener *l) {
  want_plug(l, 0);
  table_remove(l);
  if (!park(l)) listener_free(l);
}

np_listener *np_listener_get(np_loop *loop, const char *path,
                             const np_server_options *o, np_status *st) {
  int sock_type = o->pipe_mode == NP_MODE_MESSAGE ? SOCK_SEQPACKET : SOCK_STREAM;
  unsigned mode = 0600;
  np_listener *l;
  if (o->security && !np_parse_file_mode(o->security, &mode)) {
    np_status_errno(st, NP_INVALID_ARGUMENT, EINVAL);
    return NULL;
  }
  l = table_find(loop, path);
  if (!l && loop->parked_head && (l = parked_take(loop, path)) != NULL) {
    if (unpark(l, sock_type, o, mode)) {
      table_add(l);
      return l;
    }
    listener_free(l);
    l = NULL;
  }
  if (!l) return listener_open(loop, path, o, sock_type, mode, st);
  if (o->first_pipe_instance) {
    np_status_errno(st, NP_ACCESS_DENIED, EACCES);
    return NULL;
  }
  /* (ACCESS_DENIED otherwise, as on Windows) */
  if (!same_kind(l, sock_type, o)) {
    np_status_errno(st, NP_ACCESS_DENIED, EACCES);
    return NULL;
  }
  if (o->max_instances != NP_UNLIMITED_INSTANCES &&
      l->n_instances >= o->max_instances) {
    np_status_errno(st, NP_PIPE_BUSY, EBUSY);
    return NULL;
  }
  return l;
}

/* -------------------------------------------------------------- instances */

void np_listener_add(np_listener *l, np_pipe *p) {
  p->listener = l;
  p->inst_prev = NULL;
  p->inst_next = l->instances;
  if (l->instances) l->instances->inst_prev = p;
  l->instances = p;
  l->n_instances++;
}

void np_listener_set_free(np_listener *l, np_pipe *p, int is_free) {
  if (p->is_free == is_free) return;
  p->is_free = is_free;
  if (is_free) {
    p->free_next = NULL;
    p->free_prev = l->free_tail;
    if (l->free_tail)
      l->free_tail->free_next = p;
    else
      l->free_head = p;
    l->free_tail = p;
    l->n_free++;
  } else {
    NP_DLIST_REMOVE(l->free_head, l->free_tail, p, free_prev, free_next);
    p->free_prev = p->free_next = NULL;
    l->n_free--;
  }
}

void np_listener_remove(np_listener *l, np_pipe *p) {
  np_listener_set_free(l, p, 0);
  if (p->inst_prev)
    p->inst_prev->inst_next = p->inst_next;
  else
    l->instances = p->inst_next;
  if (p->inst_next) p->inst_next->inst_prev = p->inst_prev;
  p->inst_prev = p->inst_next = NULL;
  p->listener = NULL;
  if (--l->n_instances == 0)
    listener_destroy(l);
  else
    np_listener_service(l);
}

/* ------------------------------------------------------------ the backlog */

/* Fill the (empty) queue with a connection of our own, so that the backlog
 * of 0 is already used up. EAGAIN: a client got there first, same effect.
 * Either way something is queued now, and it must be accepted as soon as
 * an instance comes free (service), or the backlog of 0 that one free
 * instance gets would refuse the next client while that instance waits. */
static void plug(np_listener *l) {
  struct sockaddr_un sa;
  socklen_t len = sizeof l->plug_addr;
  int fd = socket(AF_UNIX, l->meta.sock_type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  /* Autobind: a unique abstract name, which accept() will show us. */
  if (bind(fd, (struct sockaddr *)&sa, sizeof(sa_family_t)) != 0 ||
      getsockname(fd, (struct sockaddr *)&l->plug_addr, &len) != 0) {
    close(fd);
    return;
  }
  l->plug_len = len;
  fill_addr(&sa, l->path);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    if (errno == EAGAIN) l->maybe_queued = 1;
    close(fd);
    return;
  }
  l->plug_fd = fd;
  l->maybe_queued = 1;
}

/* The plug is deferred (see the top of the file): wanted now, made by
 * np_listener_plug_deferred unless an instance comes free first. */
static void gate(np_listener *l) {
  int want = l->n_free > 0 ? (int)l->n_free - 1 : 0;
  if (want != l->backlog && listen(l->fd, want) == 0) l->backlog = want;
  want_plug(l, l->n_free == 0 && l->plug_fd < 0);
}

static void plug_now(np_listener *l) {
  want_plug(l, 0);
  if (l->n_free == 0 && l->plug_fd < 0 && !l->loop->closing) plug(l);
}

void np_listener_plug_deferred(np_loop *loop) {
  np_listener *l, *next;
  /* (plug_now takes l out of the list; should it come back in, it is at
   * the head, behind this walk) */
  for (l = loop->plug_head; l; l = next) {
    next = l->plug_next;
    plug_now(l);
  }
}

np_listener *np_listener_find(np_loop *loop, const char *path) {
  np_listener *l = table_find(loop, path);
  /* A client of ours must see PIPE_BUSY as it did with the plug made at
   * once. */
  if (l && l->plug_wanted) plug_now(l);
  return l;
}

static int is_plug(const np_listener *l, const struct sockaddr_un *peer,
                   socklen_t len) {
  return l->plug_fd >= 0 && len == l->plug_len &&
         memcmp(peer, &l->plug_addr, len) == 0;
}

/* The instance free the longest (the free list is in the order they came
 * free): a client waiting in the queue connected while that one was free,
 * if it connected while any instance free now was (on Windows its open
 * connected such an instance). An instance that came free later - a
 * connect() after disconnect(), a create - was not there for it. */
static np_pipe *pick_free(np_listener *l) { return l->free_head; }

/* Level- or edge-triggered (see Accepting); on failure nothing changes. */
static void set_level(np_listener *l, int level) {
  if (np_watch_mod(l->loop, l->fd, level ? EPOLLIN : EPOLLIN | EPOLLET, l) == 0)
    l->level = level;
}

/* Accept while something may be queued and an instance is free. reported:
 * epoll has just reported the listener. */
static void service(np_listener *l, int reported) {
  if (l->loop->closing) return;
  while (l->n_free > 0 && l->maybe_queued) {
    struct sockaddr_un peer;
    socklen_t len = sizeof peer;
    int fd = accept4(l->fd, (struct sockaddr *)&peer, &len,
                     SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      /* EAGAIN: nobody waits, and the next client brings an edge. EMFILE
       * and the like: the client stays queued and is tried again at the
       * next service (an instance freed, created, or another client
       * arriving). */
      if (errno == EAGAIN || errno == EWOULDBLOCK) l->maybe_queued = 0;
      break;
    }
    if (is_plug(l, &peer, len)) {
      close(fd);
      close(l->plug_fd);
      l->plug_fd = -1;
      continue;
    }
    /* A client with an address (ours autobind, see connect_socket) sends
     * messages that say who sent them: message_unix.c tells EOF by that. */
    if (!np_instance_attach(pick_free(l), fd,
                            len > offsetof(struct sockaddr_un, sun_path)))
      close(fd);
  }
  if (l->level) {
    /* Stopped with something maybe queued (no instance free, EMFILE...):
     * reported again at every wait unless edge-triggered. Not reported
     * (a connect took the last free instance): the next wait tells - but
     * an instance may come free before any wait (create, connect), so the
     * plug, known to be queued, stays known. */
    if (l->maybe_queued && reported)
      set_level(l, 0);
    else
      l->maybe_queued = l->plug_fd >= 0;
  } else if (!l->maybe_queued) {
    set_level(l, 1); /* the queue is empty */
  }
  gate(l);
}

void np_listener_service(np_listener *l) { service(l, 0); }

void np_listener_on_event(np_listener *l) {
  l->maybe_queued = 1;
  service(l, 1);
}

/* Take what is queued now, without waiting for epoll: an open of this loop
 * (its client goes to an instance free now), a connect() or other operation
 * on an instance with no client (a client that opened before is there, as
 * on Windows, where the open connected the instance), an instance about to
 * stop listening (pipe_unix.c, take_queued). */
void np_listener_service_now(np_listener *l) {
  l->maybe_queued = 1;
  service(l, 0);
}
