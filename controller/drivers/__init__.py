"""Drivers: the only code that touches processes, SSH, Ansible or clouds."""
