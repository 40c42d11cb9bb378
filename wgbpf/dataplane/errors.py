# SPDX-License-Identifier: GPL-2.0-or-later
"""The data plane's errors: the lowest module of the package, so every
other one may raise them."""


class AttachError(Exception):
    """Attach (or detach) refused or failed: the message says what would
    break, or what the kernel answered."""


class TcError(AttachError):
    """The kernel refused to list or change a device's tc filters or qdisc
    (other than "none there"): nothing may be concluded about what is on
    the device, so nothing is removed on the strength of it."""
