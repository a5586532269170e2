#!/usr/bin/env bash
# bench/agent.sh FIFO DIR: the app of bench/run's agent node. Runs each command line sent to FIFO ("ID<TAB>CMD"),
# one at a time, inside the node (so it inherits LD_PRELOAD and BOXER_SHIM_SOCKET): output to DIR/ID.out and
# DIR/ID.err, exit status to DIR/ID.rc (written last, by rename).
fifo=$1 dir=$2
exec 3<>"$fifo"  # read and write: the FIFO never reports end-of-file between commands
: >"$dir/ready"
while IFS=$'\t' read -r id command <&3; do
    bash -c "$command" >"$dir/$id.out" 2>"$dir/$id.err" </dev/null
    echo $? >"$dir/$id.rc.tmp"
    mv "$dir/$id.rc.tmp" "$dir/$id.rc"
done
