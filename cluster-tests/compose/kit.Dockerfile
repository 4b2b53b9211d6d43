# The fault suite's own programs (src/bin/compose_kit.rs: the next hop's sink, the
# SMTP client, the disk filler) on the same runtime base as the nodes.
ARG RUNTIME_IMAGE=bulwark-base:bookworm
FROM ${RUNTIME_IMAGE}
COPY compose_kit /usr/local/bin/compose_kit
ENTRYPOINT ["/usr/local/bin/compose_kit"]
