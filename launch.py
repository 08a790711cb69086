# launches argv[1:] with SIGINT default (bash & ignores it), prints pid
import subprocess, sys, signal
p = subprocess.Popen(sys.argv[1:], preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
print(p.pid, flush=True); sys.exit(p.wait())
