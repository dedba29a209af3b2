"""A Nomad variable's value reaches a task exactly through an ``env = true`` template
written ``KEY={{ $value.Value | toJSON }}`` (joblife.nomad.specs.ENV_VALUE).

There is no Go toolchain here, so the real semantics run as ports in
tests/support/nomad_envfile.py: go-envparse at edca257efabfac2a7e65460493ed353259ad0130
(the parser Nomad reads env templates with) and consul-template's ``toJSON`` (Go's
json.Marshal of a string). The ports are first held to envparse's own test cases
(envparse_test.go at that commit) and to an independent JSON encoder, then the round trip
is checked for every ASCII character, a sweep of Unicode and hostile secrets."""

from __future__ import annotations

import json
import random

import pytest
from joblife.nomad.specs import ENV_VALUE, secrets_template

from tests.nomad_double.template import TemplateError, render_template, template_environment
from tests.support.nomad_envfile import (
    MAX_LINE_BYTES,
    EnvParseError,
    LineError,
    parse_env,
    parse_line,
    to_json,
)

#: The secrets of the issue: every character an env file treats specially, HTML ones and
#: non-ASCII, spaces at both ends.
SECRETS = [
    "p#ss\"w'rd\\",
    " a#b \"c\" 'd' $e ${f} \\g\\\\ <h>&i; ",
    "line one\nline two\r\nend\\n",
    "export A=1 # B='2' \"3\"",
    "é ☃ 🔥 \u2028\u2029 \u00a0nbsp\u00a0 \u3000",
    "\\u0041 \\ud83d\\udd25 \\x41 \\",
    '"\'"\'"',
    "#",
    "'",
    '"',
    "\\",
    "=",
    " ",
]


def _round_trip(value: str) -> str:
    """``value`` written as the template writes it, read back as Nomad reads it."""
    return parse_env(f"JOBLIFE_X={to_json(value)}\n")["JOBLIFE_X"]


# -- the ports, held to their sources ---------------------------------------------------


#: envparse_test.go TestParseLine_OK (line, key, value); Go raw strings as Python raw ones.
PARSE_LINE_OK = [
    ("", "", ""),
    (" ", "", ""),
    ("# ...", "", ""),
    (" # ...", "", ""),
    ("FoO=", "FoO", ""),
    ("F=# ...", "F", ""),
    ("F_O= ", "F_O", ""),
    ("F= # ...", "F", ""),
    ("FOO=bar", "FOO", "bar"),
    ("export FOO=bar", "FOO", "bar"),
    (" FOO = bar baz ", "FOO", "bar baz"),
    ("\tFOO\t= \tbar \t", "FOO", "bar"),
    ("export FOO = bar", "FOO", "bar"),
    ("export = bar", "export", "bar"),
    ("A1B2C3=a1b2c3", "A1B2C3", "a1b2c3"),
    ("FOO=bar # ok", "FOO", "bar"),
    ("FOO=#bar#", "FOO", ""),
    ("FOO= # bar ", "FOO", ""),
    (r'FOO="bar#"', "FOO", "bar#"),
    (r'FOO="bar\n"', "FOO", "bar\n"),
    (r'FOO="bar\n" # comment', "FOO", "bar\n"),
    (r'FOO = " bar\t" ', "FOO", " bar\t"),
    ("FOO='bar#'", "FOO", "bar#"),
    (r"FOO='\n' # empty", "FOO", "\\n"),
    ("FOO='' # empty", "FOO", ""),
    ("FOO=normal'single ' ", "FOO", "normalsingle "),
    (r'FOO= "double\\" normal # "EOL"', "FOO", "double\\ normal"),
    (
        r"""export FOO =  'single\n' \\normal\t "double\"\n " # comment""",
        "FOO",
        'single\\n \\\\normal\\t double"\n ',
    ),
    ("U1=\U0001f525", "U1", "\U0001f525"),
    ("U2= ' \U0001f525 ' ", "U2", " \U0001f525 "),
    (r'U3="\u2318"', "U3", "\u2318"),
    (r'U3="\uD83D\uDE01"', "U3", "\U0001f601"),
    (r'U4="\u2318\uD83D\uDE01"', "U4", "\u2318\U0001f601"),
    (
        r'FOO="The template value\nmay have included\nsome newlines!\n\ud83d\udd25"',
        "FOO",
        "The template value\nmay have included\nsome newlines!\n🔥",
    ),
    ("_=x' ' ", "_", "x "),
    ("FOO.BAR=x", "FOO.BAR", "x"),
    ("FOO/BAR=x", "FOO/BAR", "x"),
    (
        r"""SOME_KEY = normal unquoted \text 'plus single quoted\' "\"double quoted " # EOL""",
        "SOME_KEY",
        r'normal unquoted \text plus single quoted\ "double quoted ',
    ),
    (r'w="\r\n"', "w", "\r\n"),
]

#: envparse_test.go TestParseLine_Err (line, part of the error).
PARSE_LINE_ERR = [
    ("foo bar", "missing ="),
    ("=bar", "empty key"),
    ("=", "empty key"),
    ("1abc=x", "key"),
    ("@abc=x", "key"),
    ("a b c=x", "key"),
    ("a\nb=x", "key"),
    ("FOO=\x00", "value"),
    (r'FOO=" bar', 'unmatched "'),
    (r"FOO=' bar", "unmatched '"),
    (r"""FOO=ok '"ok"' \"not ok ''""", 'unmatched "'),
    (r"""FOO=ok '"ok"' \"not ok '"'""", "unmatched '"),
    (r'FOO="\a"', "'a'"),
    ('FOO="\\', "incomplete escape sequence"),
    (r'FOO="\u12"', "incomplete hex sequence"),
    (r'FOO="\uabcZ"', "'Z'"),
    (r'FOO="abc \uD83D"', "incomplete Unicode surrogate pair"),
    (r'FOO="abc \uD83D \uDE01"', "incomplete Unicode surrogate pair"),
    (r'FOO="abc \uD83DDE01"', "incomplete Unicode surrogate pair"),
    (r'FOO="abc \uD83D\uDE0"', "'\"'"),
]


@pytest.mark.parametrize(("line", "key", "value"), PARSE_LINE_OK)
def test_parse_line_passes_envparse_own_cases(line: str, key: str, value: str):
    assert parse_line(line.encode()) == (key.encode(), value.encode())


def test_a_comment_after_a_multibyte_character_cuts_as_go_does():
    """envparse.go 256-258 marks a multibyte byte significant before storing it: the last
    byte of ``é`` before a comment is cut (not a case joblife renders; the port keeps it)."""
    assert parse_line("K=é # c".encode()) == (b"K", "é".encode()[:1])


@pytest.mark.parametrize(("line", "error"), PARSE_LINE_ERR)
def test_parse_line_fails_as_envparse_does(line: str, error: str):
    with pytest.raises(LineError) as raised:
        parse_line(line.encode())
    assert error in str(raised.value)


def test_parse_passes_envparse_own_cases():
    """TestParser, TestParse_OK and TestParse_Err: comments and blank lines skipped, a later
    key wins, errors carry their line's number."""
    assert parse_env("# Start of file\n\nA=1\nB=2\nC=3\nA=4\n") == {"A": "4", "B": "2", "C": "3"}
    text = (
        "# Start of file\n\nFIRST=key and value pair\n_=_   # ok\n_2=_2 # ok\n"
        'FIRST="overwrite # original"  #...\n'
    )
    assert parse_env(text) == {"FIRST": "overwrite # original", "_": "_", "_2": "_2"}
    for text, line, error in [
        ("FOO=bar\nx\nXYZ=1\n", 2, "missing ="),
        ('A=1\nB="foo\nbar"\nC=3\n', 2, 'unmatched "'),
        ("A=2\nB='foo\nbar'\nC=3", 2, "unmatched '"),
        (b'\n\n\n\n\nA=1 # ok\n# ok\n\n\nU="\\\xff"', 10, "multibyte"),
        ("x", 1, "missing ="),
    ]:
        with pytest.raises(EnvParseError) as raised:
            parse_env(text)
        assert raised.value.line == line and error in raised.value.message, text


def test_to_json_is_go_json_marshal_of_a_string():
    """Go escapes what Python's encoder does, plus ``<>&`` and U+2028/U+2029 (HTML-safe)."""
    assert to_json("<b>&</b>") == r'"\u003cb\u003e\u0026\u003c/b\u003e"'
    controls = r'"\u2028\u2029\u0000\u0001\u001f' + "\x7f" + r'\b\f"'
    assert to_json("\u2028\u2029\x00\x01\x1f\x7f\b\f") == controls
    assert to_json("\udcff") == '"\\ufffd"'  # an invalid byte (surrogateescape): U+FFFD
    rng = random.Random(20261122)
    for value in SECRETS + [_random_text(rng) for _ in range(300)]:
        python = json.dumps(value, ensure_ascii=False)
        for char, escape in {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"}.items():
            python = python.replace(char, escape)
        python = python.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
        assert to_json(value) == python
        assert json.loads(to_json(value)) == value


# -- the round trip ----------------------------------------------------------------------


@pytest.mark.parametrize("value", SECRETS)
def test_hostile_secrets_round_trip(value: str):
    assert _round_trip(value) == value


def test_every_ascii_character_and_a_sweep_of_unicode_round_trip():
    """Every ASCII character (NUL included: envparse decodes ``\\u0000``, though no
    environment variable can hold it) alone and in context, and every 97th code point
    outside the surrogates, astral ones included."""
    for code in range(128):
        char = chr(code)
        for value in (char, f"a{char}b", f" {char} ", char * 3):
            assert _round_trip(value) == value, code
    sweep = "".join(chr(c) for c in range(0x80, 0x110000, 97) if not 0xD800 <= c < 0xE000)
    assert _round_trip(sweep) == sweep
    rng = random.Random(42)
    for _ in range(300):
        value = _random_text(rng)
        if value:  # an empty value is no variable at all (envparse.go 89-91)
            assert _round_trip(value) == value


def test_a_value_written_as_it_is_is_mangled():
    """What joblife wrote before: ``KEY={{ $value }}``."""
    assert parse_env("X=p#ss\"w'rd\\\n") != {"X": "p#ss\"w'rd\\"}
    assert parse_env("X=  secret # with spaces  \n") == {"X": "secret"}
    with pytest.raises(EnvParseError):
        parse_env("X=line one\nline two\n")


def test_an_empty_value_or_a_too_long_line_are_nomad_limits():
    """Documented in docs/deployment.md: an empty value sets nothing, and a line of 64 KiB
    or more stops the reader (bufio.Scanner's token limit)."""
    assert parse_env(f"X={to_json('')}\nY=1\n") == {"Y": "1"}
    fits = "x" * (MAX_LINE_BYTES - 1 - len('X=""'))  # a line of 64 KiB - 1 bytes
    assert parse_env(f"X={to_json(fits)}\n") == {"X": fits}
    with pytest.raises(EnvParseError, match="token too long"):
        parse_env(f"A=1\nX={to_json(fits + 'x')}\n")


# -- the template ------------------------------------------------------------------------


def test_the_template_writes_each_value_as_json():
    template = secrets_template("nomad/jobs/joblife", ("database_url",))
    assert ENV_VALUE == "{{ $value.Value | toJSON }}"
    assert template.count(ENV_VALUE) == 1 and "{{ $value }}" not in template
    items = {"database_url": SECRETS[0], "storage_url": SECRETS[1]}
    rendered = render_template(template, {"nomad/jobs/joblife": items})
    assert f"JOBLIFE_DATABASE_URL={to_json(SECRETS[0])}" in rendered.splitlines()
    assert template_environment(template, {"nomad/jobs/joblife": items}) == {
        "JOBLIFE_DATABASE_URL": SECRETS[0],
        "JOBLIFE_STORAGE_URL": SECRETS[1],
    }


def test_the_double_refuses_to_json_of_the_item_itself():
    """``toJSON`` of a NomadVarItem goes through its MarshalJSON, Go's ``%q``: not JSON for
    ``\\x01``, ``\\a``... so the double refuses it rather than model it as JSON."""
    template = (
        '{{- with nomadVar "p" -}}{{- range $key, $value := . }}\n'
        "X={{ $value | toJSON }}{{- end }}{{- end }}"
    )
    with pytest.raises(TemplateError, match=r"\$value.Value"):
        render_template(template, {"p": {"k": "v"}})


def _random_text(rng: random.Random) -> str:
    """Up to 40 characters, mostly the ones env files and JSON treat specially."""
    special = "#\"'\\$=`<>& \t\r\n\x00\x01\x1f\x7f\u2028\u2029\u00a0é🔥"
    length = rng.randrange(41)
    return "".join(
        rng.choice(special) if rng.random() < 0.6 else chr(rng.randrange(0x20, 0x3000))
        for _ in range(length)
    )
