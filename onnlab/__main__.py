"""`python -m onnlab …`: the same CLI as the `onnlab` console script.

It exists so that `torchrun --nproc_per_node N -m onnlab train …` starts one DDP replica per
process (torchrun runs modules, not console scripts).  Joining the process group happens in
`onnlab.cli.main` whenever torchrun's WORLD_SIZE is set, before any run folder is named.
"""

from onnlab.cli import main

if __name__ == "__main__":
    main()
