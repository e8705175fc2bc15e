"""The HTTP/JSON gateway: the Aleph Alpha REST API (`/embed`, `/semantic_embed`, ...) in the
server's process, over the same conversion, engine and scheduler as gRPC (`--http-port`)."""
