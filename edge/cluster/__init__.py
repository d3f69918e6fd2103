"""The home cluster: one model across the devices of a home, over authenticated links.

A coordinator drives workers; each worker keeps the package on its own disk and holds a slice
of it (a contiguous range of parts) in memory. Links are CurveZMQ (authenticated encryption)
after pairing with a one-time code; messages are typed frames of numpy buffers with size
limits (`frames`); a vanished worker raises `PeerLostError` within a bounded time.

Modules, one job each: `errors`, `frames` (the wire format, pure numpy), `transport` (zmq
sockets, heartbeats, limits), `keys` (Curve keys, node id, paired peers on disk), `pairing`
(the one-time-code handshake), `discovery` (mDNS, explicit peers, interface choice),
`slice_runner` (runs parts [start, end) on ONNX Runtime), `worker` (`edge cluster serve`),
`client` (the coordinator's side of one worker link), `backend` (a worker's slice as a
placement `Backend` of the engine, which re-places it when the worker is lost), `placement`
(the coordinator's split of a model over the workers it finds), `provision` (joining a board
over USB serial), `transfer` (a package sent to a worker that lacks it, verified, resumable)
and `status` (`edge cluster status`). Importing `edge` never
imports zmq: these need the `cluster` extra (`pip install "edge[cluster]"`) and are imported
on use.
"""
