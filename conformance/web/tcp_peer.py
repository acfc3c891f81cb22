"""A slixmpp client on the TCP (STARTTLS) port: answers every chat message with
"echo: <body>" so a web client's test can see a round trip through the server.

Usage: tcp_peer.py JID PASSWORD HOST PORT   (prints READY once online)
"""
import asyncio
import ssl
import sys

import slixmpp


class Peer(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password)
        self.add_event_handler("session_start", self.start)
        self.add_event_handler("message", self.on_message)

    async def start(self, _event):
        self.send_presence()
        await self.get_roster()
        print("READY", flush=True)

    def on_message(self, msg):
        if msg["type"] in ("chat", "normal") and msg["body"]:
            self.send_message(mto=msg["from"], mbody="echo: " + msg["body"], mtype="chat")


def main():
    jid, password, host, port = sys.argv[1:5]
    peer = Peer(jid, password)
    # The test server uses a generated self-signed certificate.
    peer.ssl_context.check_hostname = False
    peer.ssl_context.verify_mode = ssl.CERT_NONE
    peer.connect(host=host, port=int(port))
    asyncio.get_event_loop().run_until_complete(peer.disconnected)


if __name__ == "__main__":
    main()
