"""9P2000, 9P2000.u and 9P2000.L messages and their wire form.

Pure: bytes in, dataclasses out, and back.  No sockets, no files, no clock.
The rest of the shim imports this package only, as `codec`:

    constants  tags, fids, qid types, mode bits, open modes, getattr masks
    wire       qid, stat and dirent records, the frame splitter, decode errors
    spec       `@message(code, "field:kind ...")`: one spec string per message
               drives both `encode` and `decode`
    classic    the 9P2000 messages (with the .u fields)
    linux      the 9P2000.L messages
    dialects   which requests each dialect speaks
"""

from dockerfs_fuse.ninep.codec.classic import *  # noqa: F403
from dockerfs_fuse.ninep.codec.constants import *  # noqa: F403
from dockerfs_fuse.ninep.codec.dialects import *  # noqa: F403
from dockerfs_fuse.ninep.codec.linux import *  # noqa: F403
from dockerfs_fuse.ninep.codec.spec import *  # noqa: F403
from dockerfs_fuse.ninep.codec.wire import *  # noqa: F403
