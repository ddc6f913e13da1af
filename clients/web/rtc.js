// WebRTC audio path: the microphone and the agent's voice travel as Opus over a peer connection
// to the voxpipe server; signaling and every text event stay on the WebSocket
// (webrtc_offer {sdp} -> webrtc_answer {sdp}, ICE gathered before each side's SDP is sent).

export class RtcAudio {
  constructor({ onState, onRemoteStream, gatherTimeoutMs = 3000 }) {
    this.onState = onState;
    this.onRemoteStream = onRemoteStream;
    this.gatherTimeoutMs = gatherTimeoutMs;
    this.pc = null;
    this.transceiver = null;
  }

  /** Build the peer connection and return the complete offer SDP (host candidates included). */
  async offer(micTrack) {
    this.close();
    const pc = new RTCPeerConnection({ iceServers: [] });
    this.pc = pc;
    this.transceiver = pc.addTransceiver("audio", { direction: "sendrecv" });
    if (micTrack) await this.transceiver.sender.replaceTrack(micTrack);
    pc.ontrack = (event) => this.onRemoteStream?.(event.streams[0] || new MediaStream([event.track]));
    pc.onconnectionstatechange = () => this.onState?.(pc.connectionState);
    this.onState?.("gathering");
    await pc.setLocalDescription(await pc.createOffer());
    await this.gathered(pc);
    return pc.localDescription.sdp;
  }

  gathered(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        pc.removeEventListener("icegatheringstatechange", check);
        resolve();
      };
      const check = () => pc.iceGatheringState === "complete" && done();
      const timer = setTimeout(done, this.gatherTimeoutMs); // send what we have
      pc.addEventListener("icegatheringstatechange", check);
    });
  }

  async accept(sdp) {
    if (!this.pc) return;
    await this.pc.setRemoteDescription({ type: "answer", sdp });
  }

  /** Mic on/off during a call: swap the sent track (null sends nothing). */
  async setMic(track) {
    if (this.transceiver) await this.transceiver.sender.replaceTrack(track);
  }

  close() {
    if (!this.pc) return;
    this.pc.ontrack = this.pc.onconnectionstatechange = null;
    this.pc.close();
    this.pc = null;
    this.transceiver = null;
    this.onState?.("off");
  }
}
