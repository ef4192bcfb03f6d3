# Shared helpers of the podwarden testbed scripts (busybox sh; sourced, not run).

# One log line on stdout (the container log), with a UTC timestamp like a daemon's.
log() {
	echo "$(date -u '+%Y-%m-%d %H:%M:%S') $*"
}

# GET a URL and print the body. busybox `wget -T` segfaults, so the timeout
# applet bounds it; a failure leaves wget's own message on stderr.
fetch() {
	timeout "${FETCH_TIMEOUT:-3}" wget -q -O - "$1"
}

# Why a fetch failed, from the stderr it left in file $1: wget's reason
# ("Connection refused" -> "connection refused"), or "timed out" when the
# timeout applet killed it before wget said anything.
fail_reason() {
	reason=$(tail -n 1 "$1" 2>/dev/null)
	reason=${reason##*: }
	[ -n "$reason" ] || reason="timed out"
	printf '%s' "$reason" | tr 'A-Z' 'a-z'
}

# The integer value of key $1 in the flat JSON document $2.
json_int() {
	printf '%s' "$2" | sed -n "s/.*\"$1\":\([0-9][0-9]*\).*/\1/p"
}

# One look at the node's RPC (TB_NODE_RPC_PORT). On success sets node_height and
# returns 0; on failure sets node_error to the real reason and returns 1.
node_poll() {
	if info=$(fetch "http://127.0.0.1:$TB_NODE_RPC_PORT/getblockchaininfo" 2>"$NODE_POLL_ERR"); then
		node_height=$(json_int blocks "$info")
		node_error=""
		return 0
	fi
	node_error=$(fail_reason "$NODE_POLL_ERR")
	return 1
}
