"""voxpipe transports: the sans-I/O wire codec, the WebSocket server and WebRTC call-in."""
