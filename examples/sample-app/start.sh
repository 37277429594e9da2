mode=$(/bin/busybox cat /mode)
version=$(/bin/busybox cat /www/version.txt)
if [ "$mode" = "crash" ]; then
    echo "fatal: sample app $version refuses to start (MODE=crash)" >&2
    exit 3
fi
echo "sample app $version starting on :8080 (mode $mode, slot ${ZDAGENT_SLOT:-?})"
# As PID 1 the shell must forward SIGTERM itself, or `docker stop` waits for its timeout.
/bin/busybox httpd -f -p 8080 -h /www &
pid=$!
trap 'echo "sample app $version: SIGTERM, stopping"; /bin/busybox kill -TERM $pid; wait $pid; exit 0' TERM INT
wait $pid
