/*
 * buffer.c - namedpipe.buffer: a fixed-size block of memory that
 * pipe:read_into fills in place. A read() makes a new Lua string of what
 * it read, one more copy of every byte and one more object for the
 * collector; a buffer is filled where it is and read back with buf:sub()
 * only as far as the caller wants.
 *
 * The bytes are on the C heap, not in the userdata: under Windows the
 * kernel writes a pending read's bytes after the call returns, and Lua
 * frees a userdata's memory at lua_close whatever still points at it. A
 * buffer being filled is anchored (methods.c), so it is only ever
 * collected while busy at lua_close; its bytes then wait in the loop's
 * orphan list until the loop has taken every operation back from the
 * kernel (np_loop_close), and are freed only if it did (docs/windows-internals.md #2).
 */
#include <stdlib.h>
#include <string.h>

#include "lauxlib.h"
#include "lua.h"

#include "compat.h"

#include "args.h"
#include "buffer.h"

#define BUFFER_MT "namedpipe.buffer"
/* Before the bytes: the orphan list's link, and room to keep the bytes as
 * aligned as malloc's. */
#define HEADER 16
/* The largest buffer: what one ReadFile can be asked for and more than a
 * read ever returns (the pipe buffer, a message). */
#define BUFFER_MAX 0x7fffffff

static const char buffer_tag = 0;

np_buffer *np_buffer_to(lua_State *L, int arg) {
  np_buffer *b = (np_buffer *)lua_touserdata(L, arg);
  if (b && lua_rawlen(L, arg) == sizeof *b && b->tag == &buffer_tag) return b;
  return NULL;
}

np_buffer *np_buffer_check(lua_State *L, int arg, int not_busy) {
  np_buffer *b = np_buffer_to(L, arg);
  if (!b) np_type_error(L, arg, BUFFER_MT);
  if (!b->bytes) np_arg_error(L, arg, "buffer is freed"); /* __gc called by hand */
  if (not_busy && b->busy)
    np_arg_error(L, arg, "buffer is being filled by a pending read_into");
  return b;
}

/* buf:sub([i [, j]]): its bytes i..j as a string, as string.sub counts them
 * (negative from the end; default the whole buffer). */
static int buffer_sub(lua_State *L) {
  np_buffer *b = np_buffer_check(L, 1, 1);
  lua_Integer size = (lua_Integer)b->size;
  lua_Integer i = lua_isnoneornil(L, 2) ? 1 : np_check_integer(L, 2);
  lua_Integer j = lua_isnoneornil(L, 3) ? -1 : np_check_integer(L, 3);
  if (i < 0) i = i < -size ? 1 : size + i + 1;
  else if (i == 0) i = 1;
  if (j < 0) j = j < -size ? 0 : size + j + 1;
  else if (j > size) j = size;
  if (i > j)
    lua_pushliteral(L, "");
  else
    lua_pushlstring(L, b->bytes + (i - 1), (size_t)(j - i + 1));
  return 1;
}

/* (#buf and tostring(buf) work on a buffer whose __gc was called by hand,
 * as tostring() of a closed pipe does) */
static np_buffer *to_buffer(lua_State *L) {
  np_buffer *b = np_buffer_to(L, 1);
  if (!b) np_type_error(L, 1, BUFFER_MT);
  return b;
}

static int buffer_len(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)to_buffer(L)->size);
  return 1;
}

static int buffer_tostring(lua_State *L) {
  np_buffer *b = to_buffer(L);
  /* (%d: a size fits an int, and every Lua version formats one) */
  lua_pushfstring(L, "namedpipe buffer (%d bytes%s)", (int)b->size,
                  !b->bytes ? ", freed" : b->busy ? ", being filled" : "");
  return 1;
}

static int buffer_gc(lua_State *L) {
  np_buffer *b = np_buffer_to(L, 1);
  char *block;
  if (!b || !b->bytes) return 0;
  block = b->bytes - HEADER;
  b->bytes = NULL;
  if (!b->busy || (b->orphans->loop_closed && b->orphans->may_free)) {
    free(block);
  } else if (!b->orphans->loop_closed) {
    memcpy(block, &b->orphans->head, sizeof(char *));
    b->orphans->head = block;
  }
  /* else the loop gave up waiting for the kernel: never freed */
  return 0;
}

void np_orphans_close(np_orphans *o, int may_free) {
  o->loop_closed = 1;
  o->may_free = may_free;
  while (o->head) {
    char *block = o->head;
    memcpy(&o->head, block, sizeof(char *));
    if (may_free) free(block);
  }
}

static const luaL_Reg buffer_methods[] = {{"sub", buffer_sub}, {NULL, NULL}};

static const luaL_Reg buffer_meta[] = {{"__len", buffer_len},
                                       {"__tostring", buffer_tostring},
                                       {"__gc", buffer_gc},
                                       {NULL, NULL}};

int np_buffer_new(lua_State *L, np_orphans *orphans) {
  lua_Integer size = np_check_integer(L, 1);
  np_buffer *b;
  char *block;
  if (size < 1 || size > BUFFER_MAX)
    np_arg_error(L, 1, "buffer size of 1 to 2147483647 bytes expected");
  b = (np_buffer *)lua_newuserdatauv(L, sizeof *b, 0);
  b->tag = NULL; /* not a buffer until its bytes are there */
  b->bytes = NULL;
  b->size = (size_t)size;
  b->busy = 0;
  b->orphans = orphans;
  if (luaL_newmetatable(L, BUFFER_MT)) {
    luaL_setfuncs(L, buffer_meta, 0);
    luaL_newlib(L, buffer_methods);
    lua_setfield(L, -2, "__index");
  }
  lua_setmetatable(L, -2);
  block = (char *)calloc(1, (size_t)size + HEADER);
  if (!block) return luaL_error(L, "not enough memory");
  b->bytes = block + HEADER;
  b->tag = &buffer_tag;
  return 1;
}
