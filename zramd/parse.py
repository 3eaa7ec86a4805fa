"""The kernel's parsing primitives, as the zram sysfs handlers use them (lib/cmdline.c,
lib/kstrtox.c, lib/string.c). Each returns a value or raises the errno the kernel would.

They work on bytes, as the kernel does: a store handler receives the bytes written, and reads
them as a C string, so a NUL byte ends the text wherever it is. ``str`` arguments are taken
as their UTF-8 bytes (``surrogateescape`` gives back undecodable bytes exactly). Only ASCII
digits, ``a``-``f``/``A``-``F``, the sign and the suffixes mean anything; every other byte,
including bytes >= 0x80, is junk where junk is refused and ends the number where it is not.
"""

from __future__ import annotations

from zramd.errors import InvalidValueError, OutOfRangeError

U64_MASK = (1 << 64) - 1
S32_MIN, S32_MAX = -(1 << 31), (1 << 31) - 1
_SUFFIX_SHIFT = {ord(c): s for c, s in zip("kmgtpe", (10, 20, 30, 40, 50, 60), strict=True)}
_SUFFIX_SHIFT.update({ord(chr(c).upper()): s for c, s in list(_SUFFIX_SHIFT.items())})
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


def cstring(text: str | bytes) -> bytes:
    """``text`` as the C string a store handler sees: its bytes up to the first NUL."""
    if isinstance(text, str):
        try:
            data = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a lone surrogate that no byte stands for
            data = text.encode("utf-8", "surrogatepass")
    else:
        data = bytes(text)
    return data.split(b"\0", 1)[0]


def _shown(data: bytes) -> str:
    """The text as written, for messages, less the newline echo adds ("1 " stays '1 ')."""
    return repr(data.removesuffix(b"\n").decode("ascii", "backslashreplace"))


def _radix(s: bytes, base: int) -> tuple[bytes, int]:
    """``_parse_integer_fixup_radix``: base 0 auto-detects 0x.. hex (only when a hex digit
    follows) and 0.. octal; a 0x prefix is skipped in base 16."""
    if base == 0:
        if s[:1] == b"0":
            base = 16 if s[1:2] in (b"x", b"X") and s[2:3] and s[2] in _HEX_DIGITS else 8
        else:
            base = 10
    if base == 16 and s[:1] == b"0" and s[1:2] in (b"x", b"X"):
        s = s[2:]
    return s, base


def _parse_integer(s: bytes, base: int) -> tuple[int, int, bool]:
    """``_parse_integer``: (value mod 2**64, digits consumed, overflowed). Digits are 0-9 and
    a-f in either case, each below ``base``; overflow is sticky, and the value wraps."""
    n = 0
    for ch in s:
        if 0x30 <= ch <= 0x39:
            d = ch - 0x30
        elif 0x61 <= (ch | 0x20) <= 0x66:
            d = (ch | 0x20) - 0x61 + 10
        else:
            break
        if d >= base:
            break
        n += 1
    if not n:
        return 0, 0, False
    value = int(s[:n], base)
    return value & U64_MASK, n, value > U64_MASK


def memparse(text: str | bytes) -> tuple[int, int]:
    """``memparse``: (bytes, bytes consumed). A number with base auto-detection
    (``simple_strtoull``: no sign, no leading space; overflow wraps silently), then an
    optional K/M/G/T/P/E suffix (powers of 1024, any case; the shift wraps too). Whatever
    follows is ignored; nothing parsed gives (0, 0)."""
    data = cstring(text)
    body, base = _radix(data, 0)
    skipped = len(data) - len(body)
    value, n, _ = _parse_integer(body, base)
    if n == 0 and skipped == 0:
        return 0, 0
    consumed = skipped + n
    if n < len(body) and body[n] in _SUFFIX_SHIFT:
        value = (value << _SUFFIX_SHIFT[body[n]]) & U64_MASK
        consumed += 1
    return value, consumed


def _kstrtoull(data: bytes, base: int, what: str) -> int:
    """``_kstrtoull`` on a C string, no sign: overflow (ERANGE) is checked before junk
    (EINVAL), as the kernel does, then one trailing newline is allowed and nothing else."""
    body, base = _radix(data, base)
    value, n, overflow = _parse_integer(body, base)
    if overflow:
        raise OutOfRangeError(f"{what}: {_shown(data)} is out of range (max {U64_MASK})")
    if n == 0:
        raise InvalidValueError(f"{what}: {_shown(data)} is not a number")
    rest = body[n:]
    if rest[:1] == b"\n":
        rest = rest[1:]
    if rest:
        raise InvalidValueError(f"{what}: {_shown(data)} is not a number")
    return value


def kstrtoull(
    text: str | bytes, base: int = 10, *, what: str = "value", limit: int = U64_MASK
) -> int:
    """``kstrtoull`` and its narrower siblings (``kstrtouint``: ``limit=2**32-1``,
    ``kstrtou16``: ``limit=0xffff``): the whole C string is one unsigned number, an optional
    leading '+', one trailing newline. In the kernel's order: above 2**64-1 -> ERANGE (even
    with junk after), no digits or junk -> EINVAL, above ``limit`` -> ERANGE."""
    data = cstring(text)
    s = data[1:] if data[:1] == b"+" else data
    value = _kstrtoull(s, base, what)
    if value > limit:
        raise OutOfRangeError(f"{what}: {_shown(data)} is out of range (max {limit})")
    return value


def kstrtoint(text: str | bytes, base: int = 10, *, what: str = "value") -> int:
    """``kstrtoint`` (via ``kstrtoll``): a signed 32-bit number. ``-`` is followed directly
    by digits (no second sign: ``-+1`` is EINVAL), ``+`` as for ``kstrtoull``; errors in the
    same order, then outside [-2**31, 2**31-1] -> ERANGE."""
    data = cstring(text)
    if data[:1] == b"-":
        value = -_kstrtoull(data[1:], base, what)
    else:
        value = kstrtoull(data, base, what=what)
    if not S32_MIN <= value <= S32_MAX:
        raise OutOfRangeError(f"{what}: {_shown(data)} is out of range ({S32_MIN}..{S32_MAX})")
    return value


def sysfs_streq(text: str | bytes, word: str | bytes) -> bool:
    """``sysfs_streq``: equal as C strings, ignoring one trailing newline on either side."""
    a, b = cstring(text), cstring(word)
    return a == b or a.removesuffix(b"\n") == b or a == b.removesuffix(b"\n")


#: ``isspace()`` of the kernel's ctype table (lib/ctype.c) for text decoded as Latin-1: the C
#: whitespace plus 0xA0; unlike Python's str.isspace, not 0x1C..0x1F or 0x85.
KERNEL_SPACE = frozenset(" \t\n\v\f\r\xa0")


def skip_spaces(text: str) -> str:
    """``skip_spaces``: ``text`` without its leading kernel whitespace."""
    i = 0
    while i < len(text) and text[i] in KERNEL_SPACE:
        i += 1
    return text[i:]


def next_arg(args: str) -> tuple[str, str | None, str]:
    """``next_arg`` (lib/cmdline.c), one word at a time: ``(param, value, rest)``.

    ``args`` starts at a word (leading whitespace already skipped). A word ends at whitespace
    outside double quotes. ``value`` is None when the word has no ``=`` after its first
    character (so ``=5`` is a parameter named ``=5`` with no value). One pair of quotes is
    taken off: a leading quote of the word and a leading quote of the value, each with the
    word's last character if that is a quote; quotes elsewhere stay. ``rest`` has its leading
    whitespace skipped.
    """
    quoted = args[:1] == '"'
    if quoted:
        args = args[1:]
    in_quote = quoted
    equals = 0
    i = 0
    while i < len(args):
        ch = args[i]
        if ch in KERNEL_SPACE and not in_quote:
            break
        if not equals and ch == "=":
            equals = i
        if ch == '"':
            in_quote = not in_quote
        i += 1
    word, rest = args[:i], skip_spaces(args[i + 1 :])
    # the C code cuts the word with NULs: at the '=' and at a closing quote
    last_quote = i > 0 and word[-1] == '"'
    if not equals:
        param = word[:-1] if quoted and last_quote else word
        return param, None, rest
    param, value = word[:equals], word[equals + 1 :]
    if value[:1] == '"':
        value = value[1:]
        if last_quote:
            value = value[:-1]
    elif quoted and last_quote:
        value = value[:-1]
    return param, value, rest


def next_args(text: str) -> list[tuple[str, str | None]]:
    """``next_arg`` over a whole buffer: whitespace-separated ``key[=value]`` words, double
    quotes allowed around a word or a value."""
    out: list[tuple[str, str | None]] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return out
        quoted = False
        start = i
        while i < n and (quoted or not text[i].isspace()):
            if text[i] == '"':
                quoted = not quoted
            i += 1
        word = text[start:i].replace('"', "")
        key, eq, value = word.partition("=")
        out.append((key, value if eq else None))


_SIZE_SUFFIX = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}


def parse_size(text: str, *, what: str = "size") -> int:
    """A strict size for command lines and config keys: ``N`` bytes or ``N`` with a K/M/G/T/P/E
    suffix (powers of 1024, any case, optionally followed by ``iB`` or ``B``). Unlike memparse,
    anything else is an error (ValueError naming the text)."""
    s = text.strip().lower()
    for tail in ("ib", "b"):
        if len(s) > len(tail) and s.endswith(tail) and s[-len(tail) - 1] in "kmgtpe":
            s = s[: -len(tail)]
            break
    suffix = s[-1:] if s[-1:] in _SIZE_SUFFIX and s[-1:] else ""
    digits = s[: len(s) - len(suffix)]
    if not digits.isdigit() or not digits.isascii():
        raise ValueError(f"{what}: {text!r} is not a size (examples: 4096, 512M, 1G)")
    return int(digits) << _SIZE_SUFFIX[suffix]
