"""Schemathesis hooks for openapi_fuzz.sh: a message to learn (message/rfc822) is
sent as the generated text, as a text/plain body would be."""
import schemathesis

schemathesis.serializer.alias("message/rfc822", "text/plain")
