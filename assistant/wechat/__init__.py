"""The WeChat Official Account (公众号) bridge: protocol.py speaks WeChat's wire format, bridge.py keeps every
answer inside WeChat's 5-second window, format.py writes WeChat text, client.py pushes late answers.
build.py's build_wechat() is the one place these are constructed."""
