/*
 * names_unix.c - pipe names to Unix domain socket paths.
 *
 * Pipe names on Unix
 * ------------------
 * A name is either \\.\pipe\NAME (the prefix in any letter case and with
 * either separator in any of its four places, //./pipe/NAME too, as Windows
 * takes it; NAME not empty) or an absolute socket path /... used exactly as
 * given.
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
 * other than "." is refused (//server/pipe/NAME as well, which Windows also
 * takes for a remote pipe): Unix sockets are local.
 *
 * A server creates DIR (mode 0700, the last component only) when it is
 * missing. /tmp/namedpipe-UID must be a directory (not a symlink) owned by
 * the user that neither group nor others may write to, else servers and
 * clients get ACCESS_DENIED: in a shared /tmp another user could have made
 * it, or put files in it, to receive or impersonate the pipes.
 *
 * The whole path must fit in sockaddr_un.sun_path (107 bytes on Linux):
 * a longer one gives INVALID_NAME.
 *
 * Beside the socket the server keeps PATH.lock (see listener_unix.c).
 *
 * create and open go through np_socket_path_cached: the loop remembers the
 * directory and the checks it passed (see "the loop's cache" below).
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

#define PIPE_PREFIX_LEN (sizeof "\\\\.\\pipe\\" - 1)

static int is_sep(char c) { return c == '/' || c == '\\'; }

/* \\.\pipe\ as Windows reads it: either separator in each of the four
 * places, "pipe" in any letter case. */
static int has_pipe_prefix(const char *name, size_t len) {
  /* (ASCII letters only, as strncasecmp in the C locale, without the call:
   * create and open ask twice each) */
  return len >= PIPE_PREFIX_LEN && is_sep(name[0]) && is_sep(name[1]) &&
         name[2] == '.' && is_sep(name[3]) && (name[4] | 0x20) == 'p' &&
         (name[5] | 0x20) == 'i' && (name[6] | 0x20) == 'p' &&
         (name[7] | 0x20) == 'e' && is_sep(name[8]);
}

/* \\server\pipe\... (either separator) naming another machine. */
static int is_remote_pipe(const char *name, size_t len) {
  size_t i = 2;
  if (len < 3 || !is_sep(name[0]) || !is_sep(name[1])) return 0;
  while (i < len && !is_sep(name[i])) i++;
  return i > 2 && len - i >= 6 && strncasecmp(name + i + 1, "pipe", 4) == 0 &&
         is_sep(name[i + 5]);
}

/* The NAME of a checked \\.\pipe\NAME, or NULL for a socket path. */
static const char *pipe_leaf(const char *name) {
  return has_pipe_prefix(name, strlen(name)) ? name + PIPE_PREFIX_LEN : NULL;
}

const char *np_name_problem(const char *name, size_t len) {
  if (memchr(name, '\0', len)) return "pipe name contains a NUL byte";
  if (has_pipe_prefix(name, len)) {
    const char *leaf = name + PIPE_PREFIX_LEN;
    size_t n = len - PIPE_PREFIX_LEN;
    if (n == 0) return "pipe name is empty after \\\\.\\pipe\\";
    if (memchr(leaf, '/', n))
      return "pipe name may not contain '/' on Unix (it would be a directory)";
    if ((n == 1 && leaf[0] == '.') || (n == 2 && leaf[0] == '.' && leaf[1] == '.'))
      return "pipe name may not be \".\" or \"..\" on Unix";
    return NULL;
  }
  if (is_remote_pipe(name, len) ||
      (len >= 2 && name[0] == '\\' && name[1] == '\\'))
    return "pipe name: only local pipes (\\\\.\\pipe\\NAME) exist on Unix";
  if (name[0] == '/') {
    if (len == 1) return "pipe name: a socket path needs a file name after '/'";
    return NULL;
  }
  return "pipe name like \\\\.\\pipe\\NAME or an absolute socket path expected";
}

/* NAMEDPIPE_DIR, and XDG_RUNTIME_DIR unless that one is set, each NULL when
 * unset or empty. One walk of the environment finds both (two getenv calls
 * walk it twice, and create and open ask on every call: see the loop's
 * cache below); the first entry of a name is its value, as for getenv. */
static void dir_env(const char **env_dir, const char **env_xdg) {
  static const char DIR_EQ[] = "NAMEDPIPE_DIR=", XDG_EQ[] = "XDG_RUNTIME_DIR=";
  const char *dir = NULL, *xdg = NULL, *s;
  char **e = environ;
  /* (two letters before strncmp, as glibc's getenv: s[1] is there, if only
   * the terminating NUL, since s[0] is not) */
  for (; e && (s = *e) != NULL; e++) {
    if (s[0] == 'N' && s[1] == 'A' && !dir &&
        strncmp(s, DIR_EQ, sizeof DIR_EQ - 1) == 0) {
      dir = s + sizeof DIR_EQ - 1;
      if (*dir) break; /* XDG_RUNTIME_DIR no longer matters */
    } else if (s[0] == 'X' && s[1] == 'D' && !xdg &&
               strncmp(s, XDG_EQ, sizeof XDG_EQ - 1) == 0) {
      xdg = s + sizeof XDG_EQ - 1;
    }
  }
  *env_dir = dir && *dir ? dir : NULL;
  *env_xdg = !*env_dir && xdg && *xdg ? xdg : NULL;
}

/* /tmp is shared: a directory someone else made there is not ours to use,
 * nor one of ours that others may write to (they could put their own
 * socket, or lock file, in place of a server's). */
static int check_private_dir(const char *dir, np_status *st) {
  struct stat sb;
  if (lstat(dir, &sb) != 0) {
    np_status_errno(st, np_errno_err(errno), errno);
    return 0;
  }
  if (!S_ISDIR(sb.st_mode) || sb.st_uid != geteuid() ||
      (sb.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
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

/* The directory for \\.\pipe\ names (README), into dir; *is_tmp for
 * /tmp/namedpipe-UID. Returns its length, or -1 when it cannot be a prefix
 * of a socket path with a leaf of leaf_len bytes (INVALID_NAME). */
static int socket_dir(const char *env_dir, const char *env_xdg, size_t leaf_len,
                      char *dir, size_t size, int *is_tmp) {
  int n;
  *is_tmp = 0;
  if (env_dir)
    n = snprintf(dir, size, "%s", env_dir);
  else if (env_xdg)
    n = snprintf(dir, size, "%s/namedpipe", env_xdg);
  else {
    n = snprintf(dir, size, "/tmp/namedpipe-%lu", (unsigned long)geteuid());
    *is_tmp = 1;
  }
  if (n < 0 || (size_t)n >= size || (size_t)n + 1 + leaf_len >= NP_SUN_PATH)
    return -1;
  return n;
}

static int make_dir(const char *dir, np_status *st) {
  if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
    np_status_errno(st, np_errno_err(errno), errno);
    return 0;
  }
  return 1;
}

static void join_path(char path[NP_SUN_PATH], const char *dir, size_t n,
                      const char *leaf, size_t leaf_len) {
  memcpy(path, dir, n);
  path[n] = '/';
  memcpy(path + n + 1, leaf, leaf_len + 1);
}

static int absolute_path(const char *name, char path[NP_SUN_PATH],
                         np_status *st) {
  if (strlen(name) >= NP_SUN_PATH) {
    np_status_errno(st, NP_INVALID_NAME, ENAMETOOLONG);
    return 0;
  }
  strcpy(path, name);
  return 1;
}

int np_socket_path(const char *name, int create_dir, char path[NP_SUN_PATH],
                   np_status *st) {
  char dir[4096];
  const char *leaf, *env_dir, *env_xdg;
  size_t leaf_len;
  int is_tmp, n;
  if (!(leaf = pipe_leaf(name))) return absolute_path(name, path, st);
  leaf_len = strlen(leaf);
  dir_env(&env_dir, &env_xdg);
  n = socket_dir(env_dir, env_xdg, leaf_len, dir, sizeof dir, &is_tmp);
  if (n < 0) {
    np_status_errno(st, NP_INVALID_NAME, ENAMETOOLONG);
    return 0;
  }
  if (create_dir && !make_dir(dir, st)) return 0;
  if (is_tmp && !check_private_dir(dir, st)) return 0;
  join_path(path, dir, (size_t)n, leaf, leaf_len);
  return 1;
}

/* ------------------------------------------------------- the loop's cache */

/* np_socket_path costs up to four system calls (geteuid, mkdir, lstat,
 * geteuid) on every create and open, for an answer that does not change:
 * the loop keeps the directory it worked out, with the environment values
 * it came from, and which checks it passed. Every call still reads the
 * environment (dir_env, no system call), so a changed NAMEDPIPE_DIR or
 * XDG_RUNTIME_DIR is honoured at once. (A snapshot of the environment
 * that skipped the walk while the array, its length and its end looked
 * the same was tried and taken out: glibc's setenv hands back the same
 * string for a value it has seen and reallocs in place, so a few calls can
 * leave all of those the same with another value in force; clearenv frees
 * the array, which the next setenv may get back at the same address; and
 * setenv after unsetenv may shrink the array, so reading at the old length
 * read past it. Only the walk reads nothing but the current array.) Kept
 * per loop:
 *  - the effective uid of /tmp/namedpipe-UID, read when the directory is
 *    worked out (a process that changes its euid keeps using the directory
 *    of the uid it had, until the environment changes);
 *  - check_private_dir passed: the directory is ours, and in a sticky /tmp
 *    nobody else can remove or rename it, so it stays ours;
 *  - a server's mkdir: should the directory be removed after all, the
 *    server's create finds it gone (ENOENT), forgets the cache
 *    (np_dir_forget) and tries once more. */

static int same_value(const char *cached, const char *now) {
  if (!cached || !now) return cached == now;
  return strcmp(cached, now) == 0;
}

static char *copy_value(const char *v, int *ok) {
  char *c;
  if (!v) return NULL;
  c = strdup(v);
  if (!c) *ok = 0;
  return c;
}

void np_dir_cache_free(np_loop *loop) {
  np_dir_cache *c = &loop->dir;
  free(c->env_dir);
  free(c->env_xdg);
  free(c->dir);
  memset(c, 0, sizeof *c);
}

void np_dir_forget(np_loop *loop) { np_dir_cache_free(loop); }

int np_socket_path_cached(np_loop *loop, const char *name, int create_dir,
                          char path[NP_SUN_PATH], np_status *st) {
  np_dir_cache *c = &loop->dir;
  const char *leaf, *env_dir, *env_xdg;
  size_t leaf_len;
  if (!(leaf = pipe_leaf(name))) return absolute_path(name, path, st);
  leaf_len = strlen(leaf);
  dir_env(&env_dir, &env_xdg);
  if (!c->valid || !same_value(c->env_dir, env_dir) ||
      !same_value(c->env_xdg, env_xdg)) {
    char dir[4096];
    int is_tmp, ok = 1, n;
    np_dir_cache_free(loop);
    n = socket_dir(env_dir, env_xdg, 0, dir, sizeof dir, &is_tmp);
    if (n < 0) /* too long for any leaf: not worth keeping */
      return np_socket_path(name, create_dir, path, st);
    c->env_dir = copy_value(env_dir, &ok);
    c->env_xdg = copy_value(env_xdg, &ok);
    c->dir = copy_value(dir, &ok);
    if (!ok) {
      np_dir_cache_free(loop);
      return np_socket_path(name, create_dir, path, st);
    }
    c->dir_len = (size_t)n;
    c->is_tmp = is_tmp;
    c->valid = 1;
  }
  if (c->dir_len + 1 + leaf_len >= NP_SUN_PATH) {
    np_status_errno(st, NP_INVALID_NAME, ENAMETOOLONG);
    return 0;
  }
  if (create_dir && !c->made) {
    if (!make_dir(c->dir, st)) return 0;
    c->made = 1;
  }
  if (c->is_tmp && !c->checked) {
    if (!check_private_dir(c->dir, st)) return 0;
    c->checked = 1;
  }
  join_path(path, c->dir, c->dir_len, leaf, leaf_len);
  return 1;
}
