"""VMs on demand with Vagrant: a generated Vagrantfile, pinned host keys, an inventory cmflow can use at once.

    spec.py         what a cluster is (name, provider, size, box/image, cpus, memory) and its state file
    vagrantfile.py  the Vagrantfile, generated from a spec (never edited by pattern)
    vagrant.py      the `vagrant` command line: progress streamed, status and ssh-config parsed
    cluster.py      up / status / ssh-config / halt / destroy; host keys pinned; DIR/hosts.yaml written
"""
