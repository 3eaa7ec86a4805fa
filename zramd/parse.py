"""The kernel's parsing primitives, as the zram sysfs handlers use them (lib/cmdline.c,
lib/kstrtox.c). Each returns a value or raises the errno the kernel would."""

from __future__ import annotations

from zramd.errors import InvalidValueError, OutOfRangeError

U64_MASK = (1 << 64) - 1
_SUFFIX_SHIFT = {"k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def _radix(s: str, base: int) -> tuple[str, int]:
    """``_parse_integer_fixup_radix``: base 0 auto-detects 0x.. hex and 0.. octal."""
    if base == 0:
        if s[:1] == "0":
            base = 16 if s[1:2].lower() == "x" and s[2:3] in _HEX_DIGITS else 8
        else:
            base = 10
    if base == 16 and s[:2].lower() == "0x":
        s = s[2:]
    return s, base


def _parse_integer(s: str, base: int) -> tuple[int, int, bool]:
    """(value mod 2**64, characters consumed, overflowed)."""
    value = 0
    n = 0
    overflow = False
    for ch in s:
        d = _DIGITS.find(ch.lower())
        if d < 0 or d >= base:
            break
        value = value * base + d
        if value > U64_MASK:
            overflow = True
            value &= U64_MASK
        n += 1
    return value, n, overflow


def memparse(text: str) -> tuple[int, int]:
    """``memparse``: (bytes, characters consumed). A number with base auto-detection, then an
    optional K/M/G/T/P/E suffix (powers of 1024, any case). What follows is ignored; nothing
    parsed gives (0, 0)."""
    body, base = _radix(text, 0)
    skipped = len(text) - len(body)
    value, n, _ = _parse_integer(body, base)
    if n == 0 and skipped == 0:
        return 0, 0
    consumed = skipped + n
    suffix = body[n : n + 1].lower()
    if suffix in _SUFFIX_SHIFT:
        value = (value << _SUFFIX_SHIFT[suffix]) & U64_MASK
        consumed += 1
    return value, consumed


def kstrtoull(text: str, base: int = 10, *, what: str = "value", limit: int = U64_MASK) -> int:
    """``kstrtoull`` family: the whole string is one number (optional leading '+', one trailing
    newline); junk -> EINVAL, too big for ``limit`` -> ERANGE."""
    s = text[1:] if text[:1] == "+" else text
    body, base = _radix(s, base)
    value, n, overflow = _parse_integer(body, base)
    # the text as written, less the newline echo adds: "1 " must not be shown as '1'
    shown = repr(text.removesuffix("\n"))
    if n == 0:
        raise InvalidValueError(f"{what}: {shown} is not a number")
    rest = body[n:]
    if rest[:1] == "\n":
        rest = rest[1:]
    if rest:
        raise InvalidValueError(f"{what}: {shown} is not a number")
    if overflow or value > limit:
        raise OutOfRangeError(f"{what}: {shown} is out of range (max {limit})")
    return value


def kstrtoint(text: str, base: int = 10, *, what: str = "value") -> int:
    """``kstrtoint``: signed 32-bit."""
    if text[:1] == "-":
        value = kstrtoull(text[1:], base, what=what, limit=1 << 31)
        return -value
    return kstrtoull(text, base, what=what, limit=(1 << 31) - 1)


def sysfs_streq(text: str, word: str) -> bool:
    """Equal, ignoring one trailing newline on either side."""
    return text.removesuffix("\n") == word.removesuffix("\n")


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
