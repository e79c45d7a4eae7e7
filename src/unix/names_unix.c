/*
 * names_unix.c - pipe names to Unix domain socket paths.
 *
 * Pipe names on Unix
 * ------------------
 * A name is either \\.\pipe\NAME (the prefix in any letter case, NAME not
 * empty) or an absolute socket path /... used exactly as given.
 *
 * \\.\pipe\NAME is the socket DIR/NAME, where DIR is
 *   1. $NAMEDPIPE_DIR, when set and not empty;
 *   2. else $XDG_RUNTIME_DIR/namedpipe, when XDG_RUNTIME_DIR is set and not
 *      empty;
 *   3. else /tmp/namedpipe-UID, UID being the numeric effective user id.
 * NAME is kept byte for byte: backslashes are ordinary characters
 * (\\.\pipe\a\b is the file "a\b"), and letter case is kept, so unlike on
 * Windows two names differing only in case are two pipes. NAME may not
 * contain '/' and may not be "." or "..". \\server\pipe\NAME with a server
 * other than "." is refused: Unix sockets are local.
 *
 * A server creates DIR (mode 0700, the last component only) when it is
 * missing. /tmp/namedpipe-UID must be a directory (not a symlink) owned by
 * the user, else servers and clients get ACCESS_DENIED: in a shared /tmp
 * another user could have made it to receive or impersonate the pipes.
 *
 * The whole path must fit in sockaddr_un.sun_path (107 bytes on Linux):
 * a longer one gives INVALID_NAME.
 *
 * Beside the socket the server keeps PATH.lock (see listener_unix.c).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "unix.h"

static const char pipe_prefix[] = "\\\\.\\pipe\\";
#define PIPE_PREFIX_LEN (sizeof pipe_prefix - 1)

const char *np_name_problem(const char *name, size_t len) {
  if (memchr(name, '\0', len)) return "pipe name contains a NUL byte";
  if (len >= 1 && name[0] == '/') {
    if (len == 1) return "pipe name: a socket path needs a file name after '/'";
    return NULL;
  }
  if (len >= PIPE_PREFIX_LEN &&
      strncasecmp(name, pipe_prefix, PIPE_PREFIX_LEN) == 0) {
    const char *leaf = name + PIPE_PREFIX_LEN;
    size_t n = len - PIPE_PREFIX_LEN;
    if (n == 0) return "pipe name is empty after \\\\.\\pipe\\";
    if (memchr(leaf, '/', n))
      return "pipe name may not contain '/' on Unix (it would be a directory)";
    if ((n == 1 && leaf[0] == '.') || (n == 2 && leaf[0] == '.' && leaf[1] == '.'))
      return "pipe name may not be \".\" or \"..\" on Unix";
    return NULL;
  }
  if (len >= 2 && name[0] == '\\' && name[1] == '\\')
    return "pipe name: only local pipes (\\\\.\\pipe\\NAME) exist on Unix";
  return "pipe name like \\\\.\\pipe\\NAME or an absolute socket path expected";
}

static const char *env_value(const char *var) {
  const char *v = getenv(var);
  return v && *v ? v : NULL;
}

/* /tmp is shared: a directory someone else made there is not ours to use. */
static int check_private_dir(const char *dir, np_status *st) {
  struct stat sb;
  if (lstat(dir, &sb) != 0) {
    np_status_errno(st, np_errno_err(errno), errno);
    return 0;
  }
  if (!S_ISDIR(sb.st_mode) || sb.st_uid != geteuid()) {
    np_status_errno(st, NP_ACCESS_DENIED, EACCES);
    return 0;
  }
  return 1;
}

int np_pipe_path(const char *name, char *buf, size_t size, np_status *st) {
  char path[NP_SUN_PATH];
  if (!np_socket_path(name, 0, path, st)) return 0;
  if (strlen(path) >= size) {
    np_status_errno(st, NP_INVALID_NAME, ENAMETOOLONG);
    return 0;
  }
  strcpy(buf, path);
  return 1;
}

int np_socket_path(const char *name, int create_dir, char path[NP_SUN_PATH],
                   np_status *st) {
  char dir[4096];
  const char *env, *leaf = name + PIPE_PREFIX_LEN;
  size_t leaf_len = strlen(leaf);
  int is_tmp = 0, n;
  if (name[0] == '/') {
    if (strlen(name) >= NP_SUN_PATH) {
      np_status_errno(st, NP_INVALID_NAME, ENAMETOOLONG);
      return 0;
    }
    strcpy(path, name);
    return 1;
  }
  if ((env = env_value("NAMEDPIPE_DIR")) != NULL)
    n = snprintf(dir, sizeof dir, "%s", env);
  else if ((env = env_value("XDG_RUNTIME_DIR")) != NULL)
    n = snprintf(dir, sizeof dir, "%s/namedpipe", env);
  else {
    n = snprintf(dir, sizeof dir, "/tmp/namedpipe-%lu",
                 (unsigned long)geteuid());
    is_tmp = 1;
  }
  if (n < 0 || (size_t)n >= sizeof dir ||
      (size_t)n + 1 + leaf_len >= NP_SUN_PATH) {
    np_status_errno(st, NP_INVALID_NAME, ENAMETOOLONG);
    return 0;
  }
  if (create_dir && mkdir(dir, 0700) != 0 && errno != EEXIST) {
    np_status_errno(st, np_errno_err(errno), errno);
    return 0;
  }
  if (is_tmp && !check_private_dir(dir, st)) return 0;
  memcpy(path, dir, (size_t)n);
  path[n] = '/';
  memcpy(path + n + 1, leaf, leaf_len + 1);
  return 1;
}
