/* options.h - option tables (Lua) to np_*_options (C); see options.c. */
#ifndef NP_OPTIONS_H
#define NP_OPTIONS_H

#include "lua.h"
#include "np.h"

NP_INTERNAL_BEGIN

/* Fill *o from the option table at stack index arg (nil: defaults). Raises a
 * Lua argument error for an unknown key or a bad value. String options point
 * into the table, so it must stay on the stack while *o is used. */
void np_check_server_options(lua_State *L, int arg, np_server_options *o);
void np_check_client_options(lua_State *L, int arg, np_client_options *o);

NP_INTERNAL_END

#endif
