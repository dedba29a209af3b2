"""What Nomad makes of an ``env = true`` template, in Python (there is no Go toolchain in
the test environment): the template function ``toJSON`` on a string, and the env-file
parser Nomad reads the rendered file with. Both mirror their Go source at a given commit,
so a test can check that a value round-trips through the real semantics:

- **go-envparse** at ``edca257efabfac2a7e65460493ed353259ad0130``
  (github.com/hashicorp/go-envparse, ``envparse.go``): :func:`parse_env` is ``Parse``
  (lines 102-122) over ``Parser.Next`` (77-100: a ``bufio.Scanner`` of lines, a pair with
  an empty value skipped, a later key winning), :func:`parse_line` is ``parseLine``
  (177-391) and :func:`_hex_rune` is ``h2r`` (393-416). Nomad reads every ``env = true``
  template with ``envparse.Parse`` (hashicorp/nomad ``745a2b4b``,
  ``client/allocrunner/taskrunner/template/template.go``, ``loadTemplateEnv``).
- **consul-template** at ``1deacb7dc074de5c7bb9cc35bab825ba1dc41103``: ``toJSON``
  (``template/funcs.go`` 1382-1388) is ``json.Marshal`` of its argument, trimmed;
  :func:`to_json` is that for a Go string: ``appendString`` with ``escapeHTML`` of Go's
  ``src/encoding/json/encode.go`` (golang/go ``956bcd2963222dd5b981090f4cb66b547bad9c31``)
  and its ``htmlSafeSet`` (``tables.go``). Go before 1.22 wrote ``\\b`` and ``\\f`` as
  ``\\u0008`` and ``\\u000c``; envparse decodes both forms.
  ``range $key, $value := nomadVar "..."`` binds a ``NomadVarItem`` (``dependency/
  nomad_var_structs.go`` 67, 130-138): ``$value.Value`` is its string, and ``toJSON`` of the
  item itself goes through its ``MarshalJSON``, Go's ``%q`` (not JSON for ``\\x01``, ``\\a``,
  ``\\U0001xxxx``...).

Go works on bytes: so do these (values as UTF-8; invalid bytes kept through
``surrogateescape``). Error texts follow Go's where tests look at them, not to the letter.
"""

from __future__ import annotations

#: bufio.MaxScanTokenSize: a longer line (its newline included) stops the scanner with
#: "token too long".
MAX_LINE_BYTES = 64 * 1024
#: The white space of Go's unicode.IsSpace, which bytes.TrimSpace trims.
_GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + ("\u2028\u2029\u202f\u205f\u3000")
)
_HEX = "0123456789abcdef"
#: encode.go appendString: the two-character escapes json.Marshal writes.
_SHORT_ESCAPES = {
    ord("\\"): "\\\\",
    ord('"'): '\\"',
    ord("\b"): "\\b",
    ord("\f"): "\\f",
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}
#: envparse.go 300-316: the one-character escapes inside double quotes.
_ENVPARSE_ESCAPES = {
    ord('"'): b'"',
    ord("\\"): b"\\",
    ord("/"): b"/",
    ord("b"): b"\b",
    ord("f"): b"\f",
    ord("r"): b"\r",
    ord("n"): b"\n",
    ord("t"): b"\t",
}
_NORMAL, _DOUBLE, _SINGLE, _ESCAPE = range(4)


class EnvParseError(Exception):
    """envparse's ParseError: ``line`` is the line's number, 0 when reading failed."""

    def __init__(self, line: int, message: str) -> None:
        where = f"error on line {line}" if line > 0 else "error reading"
        super().__init__(f"{where}: {message}")
        self.line = line
        self.message = message


class LineError(Exception):
    """An error of :func:`parse_line` (Go returns it; ``Next`` adds the line number)."""


def to_json(value: str) -> str:
    """consul-template's ``toJSON`` of the string ``value``: Go's json.Marshal, HTML-safe."""
    data = value.encode("utf-8", "surrogateescape")
    out: list[str] = ['"']
    i = 0
    while i < len(data):
        byte = data[i]
        if byte < 0x80:
            if byte in _SHORT_ESCAPES:
                out.append(_SHORT_ESCAPES[byte])
            elif byte < 0x20 or chr(byte) in "<>&":  # not in htmlSafeSet
                out.append("\\u00" + _HEX[byte >> 4] + _HEX[byte & 0xF])
            else:
                out.append(chr(byte))
            i += 1
            continue
        rune, size = _decode_rune(data, i)
        if rune is None:
            out.append("\\ufffd")  # invalid UTF-8: utf8.RuneError, size 1
        elif rune in ("\u2028", "\u2029"):
            out.append("\\u202" + _HEX[ord(rune) & 0xF])
        else:
            out.append(rune)
        i += size
    out.append('"')
    return "".join(out)


def parse_env(text: str | bytes) -> dict[str, str]:
    """envparse.Parse: the variables of an env file, later lines winning; raises
    :class:`EnvParseError` as Go returns its ParseError."""
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    env: dict[str, str] = {}
    for number, line in enumerate(_scan_lines(data), start=1):
        if line is None:  # the lines before it were read
            raise EnvParseError(number - 1, "bufio.Scanner: token too long")
        try:
            key, value = parse_line(line)
        except LineError as error:
            raise EnvParseError(number, str(error)) from None
        if value:  # Next returns only pairs with a value (envparse.go 89-91)
            env[_text(key)] = _text(value)
    return env


def parse_line(line: bytes) -> tuple[bytes, bytes]:
    """envparse's parseLine: the key and the unquoted, unescaped value of one line
    (both empty for a blank or comment line)."""
    line = _trim_space(line)
    if not line or line[0] == ord("#"):
        return b"", b""
    if b"=" not in line:
        raise LineError("missing =")
    raw_key, _, raw_value = line.partition(b"=")
    key, value = _trim_space(raw_key), _trim_space(raw_value)
    if len(key) > len(b"export "):
        key = key.removeprefix(b"export ")
    _check_key(key)
    return key, _unquote(value)


def _check_key(key: bytes) -> None:
    """envparse.go 200-224: ``[A-Za-z_]`` then ``[A-Za-z0-9/_.]``."""
    if not key:
        raise LineError("empty key")
    first = key[0]
    if first < ord("A") or (ord("Z") < first < ord("a") and first != ord("_")) or first > ord("z"):
        raise LineError(f"key must start with [A-Za-z_] but found {chr(first)!r}")
    for byte in key[1:]:
        if not (chr(byte).isascii() and (chr(byte).isalnum() or chr(byte) in "_./")):
            raise LineError(f"key characters must be [A-Za-z0-9/_.] but found {chr(byte)!r}")


def _unquote(value: bytes) -> bytes:
    """envparse.go 226-390: the value's quoting, escapes and trailing comment, mode by mode."""
    out = bytearray()
    last_significant = 0  # trailing white space before a comment is dropped
    mode = _NORMAL
    i = 0
    while i < len(value):
        byte = value[i]
        if byte < 32:
            raise LineError(f"0x{byte:02x} is an invalid value character")
        if byte > 127:  # part of a multibyte character: no special meaning
            if mode == _ESCAPE:
                raise LineError("multibyte characters disallowed in escape sequences")
            # As envparse.go 256-258: lastSig is taken before the byte is stored, so a
            # comment right after a multibyte character cuts its last byte (Go's quirk,
            # kept: rendered templates never have comments).
            last_significant = len(out)
            out.append(byte)
        elif mode == _NORMAL:
            if byte == ord('"'):
                mode = _DOUBLE
            elif byte == ord("'"):
                mode = _SINGLE
            elif byte == ord("#"):
                return bytes(out[:last_significant])
            else:
                out.append(byte)
                if byte not in b" \t":
                    last_significant = len(out)
        elif mode == _DOUBLE:
            if byte == ord('"'):
                mode = _NORMAL
            elif byte == ord("\\"):
                mode = _ESCAPE
            else:
                out.append(byte)
                last_significant = len(out)
        elif mode == _SINGLE:
            if byte == ord("'"):
                mode = _NORMAL
            else:
                out.append(byte)
                last_significant = len(out)
        else:
            i = _unescape(value, i, out)
            last_significant = len(out)
            mode = _DOUBLE
        i += 1
    if mode == _DOUBLE:
        raise LineError('unmatched "')
    if mode == _SINGLE:
        raise LineError("unmatched '")
    if mode == _ESCAPE:
        raise LineError("incomplete escape sequence")
    return bytes(out)


def _unescape(value: bytes, i: int, out: bytearray) -> int:
    """envparse.go 298-352: the escape whose letter is ``value[i]`` appended to ``out``;
    returns the index of its last byte."""
    letter = value[i]
    if letter in _ENVPARSE_ESCAPES:
        out += _ENVPARSE_ESCAPES[letter]
        return i
    if letter != ord("u"):
        raise LineError(f"invalid escape sequence: {chr(letter)!r}")
    rune = _hex_rune(value[i + 1 :])
    i += 4
    if 0xD800 <= rune < 0xE000:  # utf16.IsSurrogate: the pair's other half must follow
        if len(value) < i + 6 or value[i + 1] != ord("\\") or value[i + 2] != ord("u"):
            raise LineError("incomplete Unicode surrogate pair")
        low = _hex_rune(value[i + 3 :])
        i += 6
        # utf16.DecodeRune: U+FFFD unless a high then a low surrogate.
        valid = 0xD800 <= rune < 0xDC00 and 0xDC00 <= low < 0xE000
        rune = 0x10000 + ((rune - 0xD800) << 10) + (low - 0xDC00) if valid else 0xFFFD
    out += chr(rune).encode("utf-8")
    return i


def _hex_rune(data: bytes) -> int:
    """envparse's h2r: the rune of four hex digits."""
    if len(data) < 4:
        raise LineError("incomplete hex sequence")
    rune = 0
    for byte in data[:4]:
        digit = chr(byte)
        if digit not in "0123456789abcdefABCDEF":
            raise LineError(f"invalid hex character: {digit!r}")
        rune = rune * 16 + int(digit, 16)
    return rune


def _scan_lines(data: bytes) -> list[bytes | None]:
    """bufio.Scanner with ScanLines: lines without their ``\\n`` and a ``\\r`` before it, the
    last one even without ``\\n``; ``None`` in place of a line too long (the scan stops)."""
    lines: list[bytes | None] = []
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        stop = len(data) if end < 0 else end
        if stop - start >= MAX_LINE_BYTES:  # its bytes fill the scanner's buffer
            lines.append(None)
            break
        line = data[start:stop]
        lines.append(line[:-1] if line.endswith(b"\r") else line)
        start = stop + 1
    return lines


def _trim_space(data: bytes) -> bytes:
    """bytes.TrimSpace: Go's Unicode white space trimmed at both ends."""
    return _text(data).strip(_GO_SPACE).encode("utf-8", "surrogateescape")


def _decode_rune(data: bytes, i: int) -> tuple[str | None, int]:
    """utf8.DecodeRune at ``i``: the character and its size, ``None`` and 1 if invalid."""
    lead = data[i]
    if 0xC2 <= lead <= 0xDF:
        size = 2
    elif 0xE0 <= lead <= 0xEF:
        size = 3
    else:
        size = 4 if 0xF0 <= lead <= 0xF4 else 1
    try:
        return data[i : i + size].decode("utf-8"), size
    except UnicodeDecodeError:
        return None, 1


def _text(data: bytes) -> str:
    """Go's string(bytes), as a Python string that keeps invalid bytes."""
    return data.decode("utf-8", "surrogateescape")
