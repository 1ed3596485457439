from sentiguard.gateway.process import run

run()
