/*
 * peer_win.c - the other end of a pipe: its process and session, and the
 * account of a server's client (impersonation).
 */
#include "win.h" /* windows.h first: sddl.h needs it */

#include <sddl.h>
#include <stdlib.h>
#include <string.h>

int np_pipe_peer(np_pipe *p, np_peer *peer, np_status *st) {
  ULONG pid = 0, session = 0;
  DWORD none;
  BOOL ok;
  /* An instance with no client has no peer to ask about (Wine's calls
   * would succeed anyway). A client that has gone still counts until the
   * disconnect, as for peer_user() and on Linux. */
  if (p->is_server && (none = np_pipe_clientless(p)) != 0) {
    np_win_status(st, none, NP_OP_CONNECT);
    return 0;
  }
  ok = p->is_server ? GetNamedPipeClientProcessId(p->h, &pid) &&
                               GetNamedPipeClientSessionId(p->h, &session)
                         : GetNamedPipeServerProcessId(p->h, &pid) &&
                               GetNamedPipeServerSessionId(p->h, &session);
  if (!ok) {
    np_pipe_status(p, st, GetLastError(), NP_OP_CONNECT);
    return 0;
  }
  peer->pid = (long)pid;
  peer->session = (long)session;
  peer->uid = peer->gid = -1;
  return 1;
}

/* UTF-8 of a UTF-16 string into buf; 0 if it does not fit. */
static int to_utf8(const wchar_t *w, char *buf, size_t size) {
  int n = WideCharToMultiByte(CP_UTF8, 0, w, -1, buf,
                              size > 0x7FFFFFFF ? 0x7FFFFFFF : (int)size,
                              NULL, NULL);
  return n > 0;
}

/* The impersonation token's user, from the token alone: the thread
 * impersonates only between the two calls below, whatever fails. */
static HANDLE client_token(np_pipe *p, np_status *st) {
  HANDLE tok = NULL;
  DWORD err = 0;
  /* No client, no account: Wine impersonates the process itself on an
   * instance without one (listening or disconnected), where Windows and
   * Linux refuse. A client that came before connect() was dispatched
   * counts, and so does one that has gone since, as on Linux, until the
   * instance is disconnected. */
  if (np_pipe_clientless(p)) {
    np_win_status(st, ERROR_PIPE_NOT_CONNECTED, NP_OP_CONNECT);
    return NULL;
  }
  if (!ImpersonateNamedPipeClient(p->h)) {
    np_pipe_status(p, st, GetLastError(), NP_OP_CONNECT);
    return NULL;
  }
  if (!OpenThreadToken(GetCurrentThread(), TOKEN_QUERY, TRUE, &tok))
    err = GetLastError();
  if (!RevertToSelf()) {
    /* The thread would go on as the client: nothing safe is left to do
     * (Microsoft's advice for a failed RevertToSelf). */
    FatalAppExitA(0, "namedpipe: RevertToSelf failed after impersonating a client");
  }
  if (err) {
    /* an anonymous client (security_qos_flags) has no token to open */
    np_win_status(st, err, NP_OP_CONNECT);
    if (err == ERROR_CANT_OPEN_ANONYMOUS || err == ERROR_BAD_IMPERSONATION_LEVEL)
      st->err = NP_ACCESS_DENIED;
    return NULL;
  }
  return tok;
}

int np_pipe_peer_user(np_pipe *p, char *user, size_t user_size, char *id,
                      size_t id_size, np_status *st) {
  union {
    TOKEN_USER tu;
    char bytes[sizeof(TOKEN_USER) + SECURITY_MAX_SID_SIZE];
  } info;
  DWORD got = 0, nname = 256, ndomain = 256;
  wchar_t name[256], domain[256], whole[514];
  wchar_t *sid_text = NULL;
  SID_NAME_USE use;
  HANDLE tok = client_token(p, st);
  BOOL ok;
  if (!tok) return 0;
  ok = GetTokenInformation(tok, TokenUser, &info, sizeof info, &got);
  CloseHandle(tok);
  if (!ok || !ConvertSidToStringSidW(info.tu.User.Sid, &sid_text)) {
    np_win_status(st, GetLastError(), NP_OP_CONNECT);
    return 0;
  }
  ok = to_utf8(sid_text, id, id_size);
  LocalFree(sid_text);
  if (!ok) {
    np_win_status(st, ERROR_INSUFFICIENT_BUFFER, NP_OP_CONNECT);
    return 0;
  }
  if (!LookupAccountSidW(NULL, info.tu.User.Sid, name, &nname, domain,
                         &ndomain, &use)) {
    /* a SID with no account name here: the SID string says who */
    if (strlen(id) >= user_size) {
      np_win_status(st, ERROR_INSUFFICIENT_BUFFER, NP_OP_CONNECT);
      return 0;
    }
    memcpy(user, id, strlen(id) + 1);
    return 1;
  }
  /* DOMAIN\user (both fit: each was at most 255 characters) */
  nname = (DWORD)wcslen(name);
  ndomain = (DWORD)wcslen(domain);
  memcpy(whole, domain, ndomain * sizeof whole[0]);
  if (ndomain) whole[ndomain++] = L'\\';
  memcpy(whole + ndomain, name, (nname + 1) * sizeof whole[0]);
  if (!to_utf8(whole, user, user_size)) {
    np_win_status(st, ERROR_INSUFFICIENT_BUFFER, NP_OP_CONNECT);
    return 0;
  }
  return 1;
}
