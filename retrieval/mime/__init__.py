"""The MIME room: what IMAP needs from a message's bytes, computed as Dovecot 2.3 does.

* `message.Message` - lazy structure (offsets per part), RFC822.SIZE, ENVELOPE,
  BODYSTRUCTURE/BODY, `BODY[section]`, BINARY and BINARY.SIZE;
* `textsearch.SearchData` (via `Message.search_data`) - the decoded, normalized
  texts SEARCH compares with; `retrieval.imap.search` evaluates the keys;
* `rfc822` - tokens, MIME parameters (RFC 2231), address lists, IMAP strings;
* `encoded` - RFC 2047 words, charset conversion (iconv), the search normalizer;
* `cte` - quoted-printable and base64 with Dovecot's strictness;
* `utf7` - modified UTF-7 mailbox names.

docs/conformance.md says how this is checked against Dovecot and where it
deliberately differs.
"""
