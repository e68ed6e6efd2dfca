"""Helper for host plugins run by xapid's host.call_plugin (see docs/plugins.md).

A plugin is an executable in the plugin directory (/etc/xapi.d/plugins). It is run
with a single argument, an XML-RPC methodCall of the function the client asked
for, whose parameters are the caller's session reference and the call's arguments
(a dict of strings). It must print an XML-RPC methodResponse. This module does both
ends, with the interface plugins written for XenServer expect:

    #!/usr/bin/env python3
    import XenAPIPlugin

    def main(session, args):
        return "hello " + args.get("name", "world")

    if __name__ == "__main__":
        XenAPIPlugin.dispatch({"main": main})

Each function gets a XenAPI session (already logged in as the caller, over the
local socket) and the argument dict, and returns a string. Raising
XenAPIPlugin.Failure(code, params) makes the call fail with that XenAPI error;
any other exception fails it with XENAPI_PLUGIN_FAILURE [function, exception
class, message]. A function the table does not have answers
UNKNOWN_XENAPI_PLUGIN_FUNCTION [function].

Install it where the plugins' python3 finds it (for example
/usr/local/lib/python3/dist-packages/XenAPIPlugin.py), with the XenAPI client
(`pip install xenapi`) for plugins that call back into the API.
"""

import os
import sys
import xmlrpc.client

__all__ = ["Failure", "dispatch", "success_message", "failure_message"]

# Where the daemon listens locally: XenServer's socket unless XAPID_SOCKET names another
# (it reaches a plugin when the daemon passes it on: XAPID_PLUGIN_PASS_ENV).
_DEFAULT_SOCKET = "/var/lib/xcp/xapi"


class Failure(Exception):
    """A XenAPI error for the caller: Failure("SOME_CODE", ["param", ...])."""

    def __init__(self, code, params):
        super().__init__(code, params)
        self.params = [code] + [str(p) for p in params]

    def __str__(self):
        return str(self.params)


def _response(status):
    return xmlrpc.client.dumps((status,), methodresponse=True)


def success_message(result):
    """The methodResponse text of a successful call returning `result`."""
    return _response({"Status": "Success", "Value": result})


def failure_message(description):
    """The methodResponse text of a failed call: `description` is [code, params...]."""
    return _response({"Status": "Failure", "ErrorDescription": [str(d) for d in description]})


def _session(session_ref):
    """A XenAPI session that uses the caller's session, or None without the XenAPI client."""
    try:
        import XenAPI  # the published client (pip install xenapi)
    except ImportError:
        return None
    path = os.environ.get("XAPID_SOCKET") or _DEFAULT_SOCKET
    if path == _DEFAULT_SOCKET:
        session = XenAPI.xapi_local()
    else:
        # XenAPI's unix-socket transport reads the socket path from the URL's host,
        # with "/" written as "_".
        session = XenAPI.Session("http://" + path.replace("/", "_") + "/",
                                 transport=XenAPI.UDSTransport())
    session._session = session_ref
    return session


def _run(fn_table, argv):
    if len(argv) != 2:
        raise Exception("Incorrect number of commandline arguments")
    params, function = xmlrpc.client.loads(argv[1])
    if len(params) != 2 or not isinstance(params[1], dict):
        raise Exception("The call does not hold a session and an argument struct")
    session_ref, args = params
    if function not in fn_table:
        return failure_message(["UNKNOWN_XENAPI_PLUGIN_FUNCTION", function])
    try:
        result = fn_table[function](_session(session_ref), args)
    except Failure as e:
        return failure_message(e.params)
    except Exception as e:  # the plugin's own failure, reported to the caller
        return failure_message(["XENAPI_PLUGIN_FAILURE", function, e.__class__.__name__, str(e)])
    return success_message(result)


def dispatch(fn_table):
    """Runs the function the call names from `fn_table` (name -> function) and prints
    the answer."""
    print(_run(fn_table, sys.argv))
