/*
 * vpindex guest /init: the only userspace process of the vpindex Linux guest.
 *
 * It reads every CPU's VP index (MSR 0x40000002, HV_X64_MSR_VP_INDEX) through /dev/cpu/N/msr,
 * snapshots the per-CPU interrupt counters of /proc/interrupts, runs workload phases that make
 * the kernel send Hyper-V PV TLB-flush and PV IPI hypercalls, snapshots the counters again,
 * prints one JSON report on the kernel log (split over numbered lines) and reboots.
 *
 * The contract with the VMM (marker strings, knob names, phase names, the report layout's
 * version) is defined once, in vpindex/backends/linux/workload.py, and reaches this file as -D
 * flags at compile time (workload.init_defines()). Knob values reach /init as environment
 * variables: Linux passes unknown `name=value` words of its command line to init that way.
 *
 * Output goes to /dev/kmsg (opened from the node in the initramfs before anything else), so each
 * line is one printk record, printed whole and synchronously by the console driver.
 *
 * Run as any process but PID 1 (a test on the build host), it mounts nothing, creates no device
 * nodes, writes to stdout and exits instead of rebooting; the workload and report are the same.
 *
 * Phases (each in its own forked process, so its mm has been live only on the CPUs it uses):
 *   list-subset   one worker on the CPU with the highest VP index, the main thread on another:
 *                 single-page remaps, so the kernel flushes a page list on a strict subset of
 *                 CPUs (0x0003, or 0x0014 as soon as that VP index is 64 or more).
 *   space-subset  the same two threads; the worker touches a populated 64-page region, then
 *                 the main thread unmaps it: more than 33 pages, a whole-space flush
 *                 (0x0002/0x0013).
 *   list-all      a worker on every other CPU: page-list flushes of ALL_PROCESSORS.
 *   ipi           a worker on every other CPU: wake-ups (reschedule / function-call IPIs) and
 *                 membarrier(PRIVATE_EXPEDITED), which IPIs every CPU running the process.
 * In the remap phases every worker also checks each page it reads against the sequence number
 * the main thread published after the remap returned: a lower value is a stale read (a TLB entry
 * that survived the flush).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if !defined(VPI_REPORT_MARKER) || !defined(VPI_PHASE_NAMES) || !defined(VPI_IRQ_NAMES) || \
	!defined(VPI_MSR_MODULE)
#error "compile with the -D flags of vpindex.backends.linux.workload.init_defines()"
#endif

#define MAX_CPUS 64
#define MAX_PHASES 8
#define MAX_ERRORS 8
#define ERROR_LEN 160
#define MAX_IRQ_NAMES 8
#define LINE_MAX_LEN 900
#define PAGE 4096UL
/* space phase: more pages than Linux flushes one by one (tlb_single_page_flush_ceiling, 33 in
 * arch/x86/mm/tlb.c), so unmapping them is a whole-address-space flush. */
#define REGION (64 * PAGE)
#define MSR_VP_INDEX 0x40000002UL
#define MSR_MAJOR 202
#define SPIN_NS 2000000L /* how long an ipi-phase worker stays running for membarrier */

/* ---- output ------------------------------------------------------------------------------ */

static int log_fd = 1;
static int as_init; /* PID 1 in the guest: mount, create nodes, log to /dev/kmsg, reboot */
static char errors[MAX_ERRORS][ERROR_LEN];
static int n_errors;

static void put_line(const char *text)
{
	char line[LINE_MAX_LEN + 2];
	size_t n = strnlen(text, LINE_MAX_LEN);

	memcpy(line, text, n);
	line[n++] = '\n';
	/* One write is one kernel log record; nothing useful can be done if it fails. */
	if (write(log_fd, line, n) < 0)
		return;
}

static void say(const char *fmt, ...)
{
	char text[LINE_MAX_LEN];
	int off = snprintf(text, sizeof(text), "%s ", VPI_PROGRESS_MARKER);
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text + off, sizeof(text) - (size_t)off, fmt, ap);
	va_end(ap);
	put_line(text);
}

/* Prints a VPINDEX-ERROR line and keeps the first MAX_ERRORS messages for the report. */
static void fail(const char *fmt, ...)
{
	char msg[ERROR_LEN], text[LINE_MAX_LEN];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	snprintf(text, sizeof(text), "%s %s", VPI_ERROR_MARKER, msg);
	put_line(text);
	if (n_errors < MAX_ERRORS)
		memcpy(errors[n_errors++], msg, sizeof(msg));
}

static void finish(void)
{
	if (!as_init)
		exit(n_errors ? 1 : 0);
	reboot(RB_AUTOBOOT);
	/* Still here: exiting makes the kernel panic, and panic=-1 reboots at once. */
	fail("reboot(RB_AUTOBOOT) failed: %s", strerror(errno));
	_exit(1);
}

static void on_watchdog(int sig)
{
	static const char msg[] = VPI_ERROR_MARKER " watchdog: the workload did not finish in time\n";

	(void)sig;
	if (write(log_fd, msg, sizeof(msg) - 1) < 0 || !as_init)
		_exit(1);
	reboot(RB_AUTOBOOT);
	_exit(1);
}

/* ---- small helpers ------------------------------------------------------------------------ */

static int64_t now_ns(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static long futex(_Atomic uint32_t *addr, int op, uint32_t val, const struct timespec *timeout)
{
	return syscall(SYS_futex, addr, op | FUTEX_PRIVATE_FLAG, val, timeout, NULL, 0);
}

static int split_names(const char *list, char names[][24], int max)
{
	int n = 0;
	const char *p = list;

	while (*p && n < max) {
		size_t len = strcspn(p, ",");

		if (len > 0 && len < 24) {
			memcpy(names[n], p, len);
			names[n++][len] = '\0';
		}
		p += len;
		if (*p == ',')
			p++;
	}
	return n;
}

/* A knob from the environment: an unsigned decimal in [lo, hi], else fallback plus an error. */
static unsigned long knob(const char *name, unsigned long fallback, unsigned long lo,
			  unsigned long hi)
{
	const char *text = getenv(name);
	char *end;
	unsigned long v;

	if (!text)
		return fallback;
	errno = 0;
	v = strtoul(text, &end, 10);
	if (errno || end == text || *end || v < lo || v > hi) {
		fail("knob %s=%.40s: want an integer in [%lu, %lu]; using %lu", name, text, lo, hi,
		     fallback);
		return fallback;
	}
	return v;
}

/* ---- CPUs, VP indexes, interrupt counters ------------------------------------------------ */

static int cpus[MAX_CPUS], n_cpus;
static long long vp_index[MAX_CPUS];
static char irq_names[MAX_IRQ_NAMES][24];
static int n_irq_names;
static unsigned long long irq_before[MAX_IRQ_NAMES][MAX_CPUS], irq_after[MAX_IRQ_NAMES][MAX_CPUS];

static void find_cpus(void)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	if (sched_getaffinity(0, sizeof(set), &set) != 0) {
		fail("sched_getaffinity: %s", strerror(errno));
		cpus[n_cpus++] = 0;
		return;
	}
	for (int cpu = 0; cpu < CPU_SETSIZE && n_cpus < MAX_CPUS; cpu++)
		if (CPU_ISSET(cpu, &set))
			cpus[n_cpus++] = cpu;
}

static int pin_self(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return sched_setaffinity(0, sizeof(set), &set);
}

static int open_msr(int cpu)
{
	char path[64];
	int fd;

	snprintf(path, sizeof(path), "/dev/cpu/%d/msr", cpu);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0 || errno != ENOENT || !as_init)
		return fd;
	/* devtmpfs did not create the node: make it (the msr driver's major is 202). */
	mkdir("/dev/cpu", 0755);
	snprintf(path, sizeof(path), "/dev/cpu/%d", cpu);
	mkdir(path, 0755);
	snprintf(path, sizeof(path), "/dev/cpu/%d/msr", cpu);
	if (mknod(path, S_IFCHR | 0600, makedev(MSR_MAJOR, cpu)) != 0 && errno != EEXIST)
		return -1;
	return open(path, O_RDONLY | O_CLOEXEC);
}

/*
 * A kernel that builds the msr driver as a module (CONFIG_X86_MSR=m, a distribution kernel) gets
 * it in the initramfs at VPI_MSR_MODULE: load it unless the driver is already there
 * (/dev/cpu/0/msr exists) or no module was packed (the project's own kernel has it built in).
 * Loading it makes devtmpfs create /dev/cpu/N/msr; open_msr() makes any node still missing.
 */
static void load_msr_module(void)
{
	struct stat st;
	int fd;

	if (stat("/dev/cpu/0/msr", &st) == 0 || stat(VPI_MSR_MODULE, &st) != 0)
		return;
	fd = open(VPI_MSR_MODULE, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		fail("open %s: %s", VPI_MSR_MODULE, strerror(errno));
		return;
	}
	if (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST)
		fail("finit_module %s: %s", VPI_MSR_MODULE, strerror(errno));
	else
		say("loaded %s", VPI_MSR_MODULE);
	close(fd);
}

static void read_vp_indexes(void)
{
	for (int i = 0; i < n_cpus; i++) {
		uint64_t value;
		int fd = open_msr(cpus[i]);

		vp_index[i] = -1;
		if (fd < 0) {
			fail("cpu %d: open msr device: %s", cpus[i], strerror(errno));
			continue;
		}
		if (pread(fd, &value, sizeof(value), MSR_VP_INDEX) != (ssize_t)sizeof(value))
			fail("cpu %d: read MSR 0x%lx: %s", cpus[i], MSR_VP_INDEX, strerror(errno));
		else
			vp_index[i] = (long long)value;
		close(fd);
	}
}

static int cpu_position(int cpu)
{
	for (int i = 0; i < n_cpus; i++)
		if (cpus[i] == cpu)
			return i;
	return -1;
}

/* Reads the named rows of /proc/interrupts into counts[name][position of the CPU]. */
static void snapshot_interrupts(unsigned long long counts[][MAX_CPUS])
{
	static char buf[1 << 16];
	int columns[MAX_CPUS], n_columns = 0;
	ssize_t got, len = 0;
	int fd = open("/proc/interrupts", O_RDONLY | O_CLOEXEC);
	char *line, *save;

	memset(counts, 0, sizeof(irq_before));
	if (fd < 0) {
		fail("open /proc/interrupts: %s", strerror(errno));
		return;
	}
	while (len < (ssize_t)sizeof(buf) - 1 &&
	       (got = read(fd, buf + len, sizeof(buf) - 1 - (size_t)len)) > 0)
		len += got;
	close(fd);
	buf[len] = '\0';

	line = strtok_r(buf, "\n", &save);
	if (!line) {
		fail("/proc/interrupts is empty");
		return;
	}
	for (char *p = strstr(line, "CPU"); p && n_columns < MAX_CPUS; p = strstr(p + 3, "CPU"))
		columns[n_columns++] = cpu_position(atoi(p + 3));

	while ((line = strtok_r(NULL, "\n", &save))) {
		char *colon = strchr(line, ':'), *p;
		char label[24];
		size_t n;

		if (!colon)
			continue;
		p = line;
		while (*p == ' ')
			p++;
		n = (size_t)(colon - p);
		if (n == 0 || n >= sizeof(label))
			continue;
		memcpy(label, p, n);
		label[n] = '\0';
		for (int k = 0; k < n_irq_names; k++) {
			if (strcmp(label, irq_names[k]) != 0)
				continue;
			p = colon + 1;
			for (int c = 0; c < n_columns; c++) {
				char *end;
				unsigned long long v = strtoull(p, &end, 10);

				if (end == p)
					break;
				if (columns[c] >= 0)
					counts[k][columns[c]] = v;
				p = end;
			}
		}
	}
}

/* ---- the workload --------------------------------------------------------------------------- */

struct phase_result {
	int ran;
	long iterations;
	int64_t ns;
	long long stale;
	int n_cpus;
	int cpus[MAX_CPUS];
	char error[ERROR_LEN];
};

enum phase_kind { REMAP, SPACE, IPI };

/* State shared by the threads of one phase's process. */
static struct {
	_Atomic uint32_t seq;       /* published after each remap has returned */
	_Atomic uint32_t acks;      /* workers done with the current seq */
	_Atomic uint32_t release;   /* ipi phase: last seq after which workers may sleep */
	_Atomic uint32_t stop;
	_Atomic long long stale;
	volatile uint64_t *page;    /* the remapped page */
	volatile uint8_t *region;   /* space phase: the region of the current seq */
	enum phase_kind kind;
	int n_workers;
} sh;

struct worker {
	pthread_t thread;
	int cpu;
};

static void wait_change(_Atomic uint32_t *word, uint32_t seen)
{
	while (atomic_load_explicit(word, memory_order_acquire) == seen)
		futex(word, FUTEX_WAIT, seen, NULL);
}

static void ack(void)
{
	atomic_fetch_add_explicit(&sh.acks, 1, memory_order_acq_rel);
	futex(&sh.acks, FUTEX_WAKE, 1, NULL);
}

/* ipi phase: stay running (so membarrier has this CPU to IPI) for up to SPIN_NS, then sleep
 * until the main thread releases this round or stops the phase. */
static void wait_released(uint32_t seq)
{
	int64_t until = now_ns(CLOCK_MONOTONIC) + SPIN_NS;
	uint32_t r;

	while ((r = atomic_load_explicit(&sh.release, memory_order_acquire)) != seq &&
	       !atomic_load(&sh.stop))
		if (now_ns(CLOCK_MONOTONIC) > until)
			futex(&sh.release, FUTEX_WAIT, r, NULL);
}

static void release(uint32_t seq)
{
	atomic_store_explicit(&sh.release, seq, memory_order_release);
	futex(&sh.release, FUTEX_WAKE, INT_MAX, NULL);
}

static void *worker_main(void *arg)
{
	uint32_t seen = 0;

	(void)arg;
	for (;;) {
		wait_change(&sh.seq, seen);
		seen = atomic_load_explicit(&sh.seq, memory_order_acquire);
		if (atomic_load(&sh.stop))
			return NULL;
		if (sh.kind == SPACE) {
			for (size_t off = 0; sh.region && off < REGION; off += PAGE)
				(void)sh.region[off];
		} else if (sh.kind == REMAP && *sh.page < seen) {
			/* The page holds the seq it was filled with before it was moved in place. */
			atomic_fetch_add(&sh.stale, 1);
		}
		ack();
		if (sh.kind == IPI)
			wait_released(seen);
	}
}

/* Publishes the next seq, wakes every worker and waits until each has acknowledged it. */
static void round_trip(uint32_t seq)
{
	atomic_store_explicit(&sh.acks, 0, memory_order_release);
	atomic_store_explicit(&sh.seq, seq, memory_order_release);
	futex(&sh.seq, FUTEX_WAKE, INT_MAX, NULL);
	for (;;) {
		uint32_t got = atomic_load_explicit(&sh.acks, memory_order_acquire);

		if (got >= (uint32_t)sh.n_workers)
			return;
		futex(&sh.acks, FUTEX_WAIT, got, NULL);
	}
}

/* A fresh page holding seq, moved over the shared page: the old page's TLB entries must go. */
static int remap(uint32_t seq, char *error)
{
	void *fresh = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);

	if (fresh == MAP_FAILED) {
		snprintf(error, ERROR_LEN, "mmap: %s", strerror(errno));
		return -1;
	}
	*(volatile uint64_t *)fresh = seq;
	if (mremap(fresh, PAGE, PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)sh.page) == MAP_FAILED) {
		snprintf(error, ERROR_LEN, "mremap: %s", strerror(errno));
		return -1;
	}
	return 0;
}

static int space_round(uint32_t seq, char *error)
{
	void *region = mmap(NULL, REGION, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);

	if (region == MAP_FAILED) {
		snprintf(error, ERROR_LEN, "mmap region: %s", strerror(errno));
		return -1;
	}
	sh.region = region;
	round_trip(seq); /* every worker has the region in its TLB now */
	if (munmap(region, REGION) != 0) {
		snprintf(error, ERROR_LEN, "munmap region: %s", strerror(errno));
		return -1;
	}
	return 0;
}

static int ipi_round(uint32_t seq, char *error)
{
	round_trip(seq);
	if (syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) != 0) {
		snprintf(error, ERROR_LEN, "membarrier: %s", strerror(errno));
		return -1;
	}
	release(seq);
	return 0;
}

/* Runs in the phase's own process; fills *out. workers_on: CPU positions 1..n_workers. */
/*
 * The CPUs of a phase, main thread first: every CPU in order, or (subset phases) the main thread
 * and one worker, the worker on the CPU with the highest VP index. Linux picks the Ex form of a
 * flush or IPI by its targets' VP indexes (arch/x86/hyperv/mmu.c, hv_apic.c in 6.12), and the
 * main thread's flushes target the worker, so any VP index of 64 or more gives the Ex forms.
 */
static int phase_cpus(int all_cpus, int order[MAX_CPUS])
{
	int high = 0, main_pos;

	if (all_cpus || n_cpus < 2) {
		for (int i = 0; i < n_cpus; i++)
			order[i] = cpus[i];
		return n_cpus;
	}
	for (int i = 1; i < n_cpus; i++)
		if (vp_index[i] > vp_index[high])
			high = i;
	main_pos = high == 0 ? 1 : 0;
	order[0] = cpus[main_pos];
	order[1] = cpus[high];
	return 2;
}

static void run_phase(enum phase_kind kind, const int *order, int n_workers, long iterations,
		      struct phase_result *out)
{
	struct worker workers[MAX_CPUS];
	int started = 0;
	int64_t t0;

	memset(&sh, 0, sizeof(sh));
	sh.kind = kind;
	out->n_cpus = 0;
	out->cpus[out->n_cpus++] = order[0];
	if (pin_self(order[0]) != 0) {
		snprintf(out->error, ERROR_LEN, "pin main thread to cpu %d: %s", order[0],
			 strerror(errno));
		return;
	}
	sh.page = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (sh.page == MAP_FAILED) {
		snprintf(out->error, ERROR_LEN, "mmap: %s", strerror(errno));
		return;
	}
	if (kind == IPI &&
	    syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) != 0) {
		snprintf(out->error, ERROR_LEN, "membarrier register: %s", strerror(errno));
		return;
	}
	for (int w = 0; w < n_workers; w++) {
		pthread_attr_t attr;
		cpu_set_t set;
		int rc;

		workers[w].cpu = order[1 + w];
		CPU_ZERO(&set);
		CPU_SET(workers[w].cpu, &set);
		pthread_attr_init(&attr);
		pthread_attr_setaffinity_np(&attr, sizeof(set), &set);
		rc = pthread_create(&workers[w].thread, &attr, worker_main, NULL);
		pthread_attr_destroy(&attr);
		if (rc != 0) {
			snprintf(out->error, ERROR_LEN, "pthread_create on cpu %d: %s",
				 workers[w].cpu, strerror(rc));
			break;
		}
		out->cpus[out->n_cpus++] = workers[w].cpu;
		started++;
	}
	sh.n_workers = started;

	/* Round 1: every worker has run once and has the page in its TLB. */
	*sh.page = 1;
	round_trip(1);
	if (kind == IPI)
		release(1);
	t0 = now_ns(CLOCK_MONOTONIC);
	for (long i = 0; i < iterations && !out->error[0]; i++) {
		uint32_t seq = (uint32_t)i + 2;
		int rc;

		if (kind == REMAP) {
			rc = remap(seq, out->error);
			if (rc == 0)
				round_trip(seq);
		} else if (kind == SPACE) {
			rc = space_round(seq, out->error);
		} else {
			rc = ipi_round(seq, out->error);
		}
		if (rc != 0)
			break;
		out->iterations = i + 1;
	}
	out->ns = now_ns(CLOCK_MONOTONIC) - t0;
	atomic_store(&sh.stop, 1);
	release(UINT32_MAX);
	atomic_fetch_add(&sh.seq, 1);
	futex(&sh.seq, FUTEX_WAKE, INT_MAX, NULL);
	for (int w = 0; w < started; w++)
		pthread_join(workers[w].thread, NULL);
	out->stale = atomic_load(&sh.stale);
	out->ran = 1;
}

struct phase_spec {
	char name[24];
	enum phase_kind kind;
	int all_cpus; /* a worker on every other CPU (else one worker) */
	int space;    /* uses the space-phase iteration count */
};

static const struct phase_spec known_phases[] = {
	{ VPI_PHASE_LIST_SUBSET, REMAP, 0, 0 },
	{ VPI_PHASE_SPACE_SUBSET, SPACE, 0, 1 },
	{ VPI_PHASE_LIST_ALL, REMAP, 1, 0 },
	{ VPI_PHASE_IPI, IPI, 1, 0 },
};

/* Forks a process for the phase so its mm starts on the main thread's CPU alone. */
static void phase_in_child(const struct phase_spec *spec, long iterations,
			   struct phase_result *out)
{
	int status;
	pid_t pid;
	int order[MAX_CPUS];
	int n_workers = phase_cpus(spec->all_cpus, order) - 1;

	memset(out, 0, sizeof(*out));
	pid = fork();
	if (pid < 0) {
		snprintf(out->error, ERROR_LEN, "fork: %s", strerror(errno));
		return;
	}
	if (pid == 0) {
		run_phase(spec->kind, order, n_workers, iterations, out);
		_exit(0);
	}
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR) {
			snprintf(out->error, ERROR_LEN, "waitpid: %s", strerror(errno));
			return;
		}
	if (WIFSIGNALED(status))
		snprintf(out->error, ERROR_LEN, "phase process killed by signal %d",
			 WTERMSIG(status));
	else if (!out->ran && !out->error[0])
		snprintf(out->error, ERROR_LEN, "phase process exited with status %d",
			 WEXITSTATUS(status));
}

/* ---- the report ------------------------------------------------------------------------------ */

static char report[1 << 16];
static size_t report_len;

static void emit(const char *fmt, ...)
{
	va_list ap;
	int n;

	if (report_len >= sizeof(report) - 1)
		return;
	va_start(ap, fmt);
	n = vsnprintf(report + report_len, sizeof(report) - report_len, fmt, ap);
	va_end(ap);
	if (n > 0)
		report_len += (size_t)n;
	if (report_len > sizeof(report) - 1)
		report_len = sizeof(report) - 1;
}

static void emit_string(const char *s)
{
	emit("\"");
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			emit("\\%c", c);
		else if (c < 0x20 || c >= 0x7f)
			emit("\\u%04x", c);
		else
			emit("%c", c);
	}
	emit("\"");
}

static void emit_counts(unsigned long long counts[][MAX_CPUS])
{
	emit("{");
	for (int k = 0; k < n_irq_names; k++) {
		emit("%s", k ? "," : "");
		emit_string(irq_names[k]);
		emit(":[");
		for (int i = 0; i < n_cpus; i++)
			emit("%s%llu", i ? "," : "", counts[k][i]);
		emit("]");
	}
	emit("}");
}

/* The length of the report chunk starting at off: at most VPI_REPORT_CHUNK characters, and
 * never ending or followed by a blank, so a console that trims blanks cannot change the JSON. */
static size_t chunk_at(size_t off)
{
	size_t n = report_len - off < VPI_REPORT_CHUNK ? report_len - off : VPI_REPORT_CHUNK;

	while (n > 1 && off + n < report_len &&
	       (report[off + n - 1] == ' ' || report[off + n] == ' '))
		n--;
	return n;
}

/* Prints the report as numbered lines "MARKER i/n chunk". */
static void print_report(void)
{
	size_t off = 0, total = 0, part = 0;

	for (size_t o = 0; o < report_len; total++)
		o += chunk_at(o);
	while (off < report_len) {
		char line[LINE_MAX_LEN];
		size_t n = chunk_at(off);

		snprintf(line, sizeof(line), "%s %zu/%zu %.*s", VPI_REPORT_MARKER, ++part, total,
			 (int)n, report + off);
		put_line(line);
		off += n;
	}
}

int main(void)
{
	static struct phase_result *results;
	char phase_names[MAX_PHASES][24], workload[32];
	const struct phase_spec *specs[MAX_PHASES];
	int n_specs = 0, n_names;
	const char *text;
	unsigned long iterations, space_iterations, watchdog;
	int64_t start_ms, end_ms;
	long long stale_total = 0;

	as_init = getpid() == 1;
	/* /dev/kmsg comes from the initramfs; devtmpfs is not mounted yet. */
	if (as_init && (log_fd = open("/dev/kmsg", O_WRONLY | O_CLOEXEC)) < 0)
		log_fd = 1;
	start_ms = now_ns(CLOCK_BOOTTIME) / 1000000;
	say("init started");

	if (as_init) {
		mkdir("/proc", 0755);
		mkdir("/dev", 0755);
		if (mount("proc", "/proc", "proc", 0, NULL) != 0)
			fail("mount proc: %s", strerror(errno));
		/* Without devtmpfs the nodes come from the initramfs and open_msr() makes the rest. */
		if (mount("devtmpfs", "/dev", "devtmpfs", 0, NULL) != 0 && errno != ENODEV)
			fail("mount devtmpfs: %s", strerror(errno));
		load_msr_module();
	}

	text = getenv(VPI_ENV_WORKLOAD);
	snprintf(workload, sizeof(workload), "%s", text ? text : VPI_DEFAULT_WORKLOAD);
	iterations = knob(VPI_ENV_ITERATIONS, VPI_DEFAULT_ITERATIONS, 1, VPI_MAX_ITERATIONS);
	space_iterations = knob(VPI_ENV_SPACE_ITERATIONS, VPI_DEFAULT_SPACE_ITERATIONS, 1,
				VPI_MAX_ITERATIONS);
	watchdog = knob(VPI_ENV_WATCHDOG, VPI_DEFAULT_WATCHDOG_S, 1, 86400);
	text = getenv(VPI_ENV_PHASES);
	n_names = split_names(text ? text : VPI_DEFAULT_PHASES, phase_names, MAX_PHASES);
	for (int i = 0; i < n_names; i++) {
		const struct phase_spec *found = NULL;

		for (size_t k = 0; k < sizeof(known_phases) / sizeof(known_phases[0]); k++)
			if (strcmp(phase_names[i], known_phases[k].name) == 0)
				found = &known_phases[k];
		if (found)
			specs[n_specs++] = found;
		else if (strcmp(phase_names[i], VPI_NO_PHASES) != 0)
			fail("unknown phase %.24s", phase_names[i]);
	}
	n_irq_names = split_names(VPI_IRQ_NAMES, irq_names, MAX_IRQ_NAMES);

	signal(SIGALRM, on_watchdog);
	alarm((unsigned int)watchdog);

	find_cpus();
	if (pin_self(cpus[0]) != 0)
		fail("pin /init to cpu %d: %s", cpus[0], strerror(errno));
	read_vp_indexes();
	say("cpus=%d workload=%s iterations=%lu space_iterations=%lu", n_cpus, workload,
	    iterations, space_iterations);

	results = mmap(NULL, sizeof(*results) * MAX_PHASES, PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (results == MAP_FAILED) {
		fail("mmap results: %s", strerror(errno));
		n_specs = 0;
		results = NULL;
	}
	snapshot_interrupts(irq_before);
	for (int i = 0; i < n_specs; i++) {
		long n = (long)(specs[i]->space ? space_iterations : iterations);

		say("phase %s start", specs[i]->name);
		phase_in_child(specs[i], n, &results[i]);
		if (results[i].error[0])
			fail("phase %s: %s", specs[i]->name, results[i].error);
		say("phase %s done iterations=%ld ns=%lld stale=%lld", specs[i]->name,
		    results[i].iterations, (long long)results[i].ns, results[i].stale);
		stale_total += results[i].stale;
	}
	snapshot_interrupts(irq_after);
	alarm(0);
	end_ms = now_ns(CLOCK_BOOTTIME) / 1000000;

	emit("{\"v\":%d,\"workload\":", VPI_REPORT_VERSION);
	emit_string(workload);
	emit(",\"cpus\":[");
	for (int i = 0; i < n_cpus; i++)
		emit("%s%d", i ? "," : "", cpus[i]);
	emit("],\"vp\":[");
	for (int i = 0; i < n_cpus; i++)
		emit("%s%lld", i ? "," : "", vp_index[i]);
	emit("],\"start_ms\":%lld,\"end_ms\":%lld,\"phases\":[", (long long)start_ms,
	     (long long)end_ms);
	for (int i = 0; i < n_specs; i++) {
		emit("%s{\"name\":", i ? "," : "");
		emit_string(specs[i]->name);
		emit(",\"iterations\":%ld,\"ns\":%lld,\"stale\":%lld,\"cpus\":[",
		     results[i].iterations, (long long)results[i].ns, results[i].stale);
		for (int c = 0; c < results[i].n_cpus; c++)
			emit("%s%d", c ? "," : "", results[i].cpus[c]);
		emit("]}");
	}
	emit("],\"irq_before\":");
	emit_counts(irq_before);
	emit(",\"irq_after\":");
	emit_counts(irq_after);
	emit(",\"stale\":%lld,\"errors\":[", stale_total);
	for (int i = 0; i < n_errors; i++) {
		emit("%s", i ? "," : "");
		emit_string(errors[i]);
	}
	emit("]}");
	print_report();
	say(as_init ? "done; rebooting" : "done");
	finish();
	return 1;
}
