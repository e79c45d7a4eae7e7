/*
 * peer_unix.c - the other end of a pipe: its process and credentials
 * (SO_PEERCRED), and its account's name.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <sys/socket.h>

#include "unix.h"

static int peer_cred(np_pipe *p, struct ucred *cred, np_status *st) {
  socklen_t len = sizeof *cred;
  if (!np_io_allowed(p, NP_OP_CONNECT, st)) return 0;
  if (getsockopt(p->fd, SOL_SOCKET, SO_PEERCRED, cred, &len) != 0) {
    np_status_errno(st, np_errno_err(errno), errno);
    return 0;
  }
  return 1;
}

int np_pipe_peer(np_pipe *p, np_peer *peer, np_status *st) {
  struct ucred cred;
  if (!peer_cred(p, &cred, st)) return 0;
  peer->pid = (long)cred.pid;
  peer->session = -1;
  peer->uid = (long)cred.uid;
  peer->gid = (long)cred.gid;
  return 1;
}

int np_pipe_peer_user(np_pipe *p, char *user, size_t user_size, char *id,
                      size_t id_size, np_status *st) {
  struct ucred cred;
  struct passwd pw, *found = NULL;
  char buf[4096];
  if (!peer_cred(p, &cred, st)) return 0;
  snprintf(id, id_size, "%lu", (unsigned long)cred.uid);
  /* an account with no name (a container's uid): the number says who */
  if (getpwuid_r(cred.uid, &pw, buf, sizeof buf, &found) != 0 || !found)
    snprintf(user, user_size, "%s", id);
  else
    snprintf(user, user_size, "%s", pw.pw_name);
  return 1;
}
