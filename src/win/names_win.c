/*
 * names_win.c - pipe names as Windows takes them: \\.\pipe\NAME (any
 * server part, either slash), and np.path, which is the name itself.
 */
#include <string.h>

#include "win.h"

static int is_sep(char c) { return c == '\\' || c == '/'; }

const char *np_name_problem(const char *name, size_t len) {
  /* \\server\pipe\NAME, where server is "." for this machine. */
  const char *expect = "pipe name like \\\\.\\pipe\\NAME expected";
  size_t i = 2;
  if (len < 3 || !is_sep(name[0]) || !is_sep(name[1])) return expect;
  while (i < len && !is_sep(name[i])) i++;
  if (i == 2 || len - i < 6 || _strnicmp(name + i + 1, "pipe", 4) != 0 ||
      !is_sep(name[i + 5]) || i + 6 >= len)
    return expect;
  /* \\.\pipe\. (and .., and any NAME of dots only, trailing dots being
   * dropped from a path) is the pipe file system's directory, which
   * CreateFile opens as if it were a pipe: refused, as "." and ".." are on
   * Unix. */
  for (i += 6; i < len && name[i] == '.'; i++) {}
  if (i == len) return "pipe name may not be dots only (\".\", \"..\")";
  return NULL;
}

int np_pipe_path(const char *name, char *buf, size_t size, np_status *st) {
  size_t len = strlen(name);
  if (len >= size) {
    np_win_status(st, ERROR_FILENAME_EXCED_RANGE, NP_OP_CONNECT);
    return 0;
  }
  memcpy(buf, name, len + 1);
  return 1;
}
