"""
Client endpoint strings, as C{tcplab client --connect} and C{tcplab bench
--connect} both read them: one parser, so that the two accept the same forms.
"""

from __future__ import annotations

from twisted.internet.abstract import isIPv6Address


def splitEndpoint(description: str) -> tuple[str, list[str], dict[str, str]]:
    """
    Split an endpoint string at its colons (not those escaped with a
    backslash) into its kind, positional values and keyword values.  A
    field without C{=} that follows a keyword field continues its value
    when that makes the value an IPv6 address and the string names its port
    by keyword (C{host=::1:port=8081}), or is a C{tcp6} one (which takes
    keywords only); otherwise it is positional, as for Twisted.

    @return: C{(kind, positional, named)}, the kind in lower case.
    @raise ValueError: if a keyword is given twice.
    """
    fields: list[str] = []
    current: list[str] = []
    characters = iter(description)
    for character in characters:
        if character == "\\":
            current.append(next(characters, ""))
        elif character == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(character)
    fields.append("".join(current))
    kind, rest = fields[0].lower(), fields[1:]
    merge = kind == "tcp6" or any(field.startswith("port=") for field in rest)
    positional: list[str] = []
    named: dict[str, str] = {}
    index = 0
    while index < len(rest):
        field = rest[index]
        index += 1
        if "=" not in field:
            positional.append(field)
            continue
        key, value = field.split("=", 1)
        if key in named:
            raise ValueError(f"endpoint {description!r} gives {key}= twice")
        if merge:
            # Take as many following fields as make an IPv6 address.
            for end in range(len(rest), index, -1):
                if all("=" not in f for f in rest[index:end]):
                    candidate = ":".join([value, *rest[index:end]])
                    if isIPv6Address(candidate):
                        value, index = candidate, end
                        break
        named[key] = value
    return kind, positional, named


#: What each kind of client endpoint string must name, by keyword or, where
#: Twisted allows it, by position, in this order (C{tcp:H:P}, C{unix:P}).
REQUIRED_FIELDS = {
    "tcp": ("host", "port"),
    "tcp6": ("host", "port"),
    "tls": ("host", "port"),
    "unix": ("path",),
}


def requiredFields(description: str, kind: str, positional: list[str], named: dict[str, str]) -> dict[str, str]:
    """
    @return: the fields C{kind} requires (L{REQUIRED_FIELDS}), each named or
        else taken from the non-empty positional values, in order.
    @raise ValueError: naming the first one missing.
    """
    required = REQUIRED_FIELDS.get(kind, ())
    values = {field: named[field] for field in required if named.get(field)}
    missing = [field for field in required if field not in values]
    values.update(zip(missing, [value for value in positional if value], strict=False))
    for field in required:
        if field not in values:
            raise ValueError(f"endpoint {description!r} needs a {field} ({field}=...)")
    return values
