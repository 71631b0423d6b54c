#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>

/* spinner FILE: at SCHED_IDLE, counts spins of 4096 into FILE's first 8 bytes. */
int main(int argc, char **argv) {
    struct sched_param none = {0};
    sched_setscheduler(0, SCHED_IDLE, &none);
    int fd = open(argv[1], O_RDWR);
    volatile unsigned long *spins = mmap(0, 8, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    for (;;) {
        for (volatile int i = 0; i < 4096; i++)
            ;
        *spins += 1;
    }
}
